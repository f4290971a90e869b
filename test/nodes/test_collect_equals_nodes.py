"""``qt-ros sim collect`` bags == bags the real nodes record, for one seed.

One clean demonstration recorded through real processes (``sim_robot_node`` in lockstep,
``demonstrator_node``, ``recorder_node``, each with its section of the shipped
``config/sim.yaml``; the episode driver plays the operator, as ``make demo`` does) and the same
seed collected in-process by ``qt-ros sim collect``. Both are converted with the demonstrator's
mapping: the steps (actions and bins), frames, states, length and label must be the same.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml
from std_srvs.srv import SetBool, Trigger

from qt_ros.data.episode_conversion import ConvertOptions, convert_bag
from qt_ros.data.topic_mapping import TopicMapping
from qt_ros.episodes.bag_reader import BagReader
from qt_ros.nodes.episode_driver import EpisodeDriver
from qt_ros.sim.collect_config import CollectConfig
from qt_ros.sim.collection import collect, demonstration_mapping
from qt_ros.srv import StartEpisode

from conftest import REPO, python_args

pytestmark = pytest.mark.ros
SHIPPED = yaml.safe_load((REPO / "config" / "sim.yaml").read_text())
SEED = 5  # the episode's scene and demonstrator seed
SIZE = 64


def node(module: str, section: str, **overrides) -> list[str]:
    """``module`` with the shipped sim.yaml section and ``overrides`` as -p."""
    params = {**SHIPPED[section]["ros__parameters"], **overrides}
    args = python_args("-m", f"qt_ros.nodes.{module}", "--ros-args")
    for name, value in params.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list):
            value = "[" + ",".join(f'"{v}"' for v in value) + "]"
        args += ["-p", f"{name}:={value}"]
    return args


def converted(bag, mapping_file) -> dict:
    episode = convert_bag(bag, ConvertOptions(image_size=(SIZE, SIZE),
                                              mapping=TopicMapping.from_yaml(mapping_file)))
    assert episode.record["dropped"] == {}, episode.record["dropped"]
    return {**episode.arrays, "outcome": episode.record["outcome"]}


def test_collected_bag_converts_like_the_nodes_bag(spawn, env, tmp_path):
    assert SHIPPED["sim_robot"]["ros__parameters"].get("lockstep") is True
    record_dir = tmp_path / "nodes"
    procs = [
        # the sim node's first scene is seed + 0; the driver's reset draws seed + 1
        spawn(node("sim_robot_node", "sim_robot", seed=SEED - 1, image_width=SIZE,
                   image_height=SIZE), env=env, name="sim"),
        spawn(node("recorder_node", "recorder", record_dir=record_dir, source="demonstration",
                   min_free_space_mb=1.0), env=env, name="recorder"),
        spawn(node("demonstrator_node", "demonstrator", seed=SEED, failure_rate=0.0),
              env=env, name="demonstrator"),
    ]

    def alive() -> None:
        for p in procs:
            assert p.alive(), f"a node died:\n{p.output()[-3000:]}"

    with EpisodeDriver(int(env["ROS_DOMAIN_ID"]), name="test_driver") as driver:
        driver.wait_for_service(Trigger, "sim_robot/reset", 90, alive)
        driver.wait_for_service(StartEpisode, "recorder/start_episode", 90, alive)
        driver.wait_for_service(SetBool, "demonstrator/enable", 90, alive)
        time.sleep(1.0)  # the latched instruction reaches the recorder (as in the demo)
        episode = driver.run_episode("demonstrator", 20.0)
        alive()
    assert episode.ended_by == "terminate" and f"seed {SEED}" in episode.scene, episode

    demo_noise = SHIPPED["demonstrator"]["ros__parameters"]["noise"]
    summary = collect(CollectConfig(out=str(tmp_path / "collected"), demos=1, replays=0,
                                    seed=SEED, image_size=str(SIZE), workers=1,
                                    demo_noise=demo_noise))
    (report,) = summary.episodes
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(demonstration_mapping(SHIPPED["demonstrator"]["ros__parameters"]
                                             ["control_rate"]))
    ours = converted(tmp_path / "collected" / report.episode_id, mapping)
    theirs = converted(episode.bag, mapping)

    with BagReader.open(episode.bag) as bag:  # the same topics and types
        node_topics = {t: i.msgtype for t, i in bag.topics.items()}
    with BagReader.open(tmp_path / "collected" / report.episode_id) as bag:
        assert {t: i.msgtype for t, i in bag.topics.items()} == node_topics
    assert ours["outcome"] == theirs["outcome"] == episode.outcome == "success"
    assert len(ours["action"]) == len(theirs["action"]) == report.steps
    np.testing.assert_array_equal(ours["action_bins"], theirs["action_bins"])
    np.testing.assert_array_equal(ours["action"], theirs["action"])
    np.testing.assert_array_equal(ours["frames"], theirs["frames"])
    np.testing.assert_array_equal(ours["reward"], theirs["reward"])
    # The recorder node logs on receipt, so a tick's joint state can follow the command that
    # answers it in the bag (2-3 of 27 steps per run seen); the converter pairs a step with the
    # state stamped with its frame, so the states are the same too.
    np.testing.assert_array_equal(ours["state"], theirs["state"])
