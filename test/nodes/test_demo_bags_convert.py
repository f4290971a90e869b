"""Demonstrations recorded through the real nodes convert to the demonstrator's own actions.

sim_robot (in lockstep) + demonstrator + recorder processes record a few episodes as ``make demo``
does (the episode driver plays the operator); the recorder also records the simulator's
privileged state, the demonstrator's only input. The bags are converted with the demo's own topic
mapping; then the scripted demonstrator (noise 0, no mistakes: a pure function of the state) is
re-run in-process on the state each step answered, and its action must be the converted step's,
at every step.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from std_srvs.srv import SetBool, Trigger

from qt_ros.data.episode_conversion import ConvertOptions, convert_bag
from qt_ros.data.topic_mapping import TopicMapping
from qt_ros.episodes.bag_reader import BagReader
from qt_ros.nodes.episode_driver import EpisodeDriver
from qt_ros.qtransformer.tokenizer import ActionTokenizer
from qt_ros.sim.collection import demonstration_mapping
from qt_ros.sim.demonstrator import ScriptedDemonstrator
from qt_ros.sim.node_configs import DemonstratorNodeConfig
from qt_ros.sim.simulator import SimState
from qt_ros.srv import StartEpisode

from conftest import python_args

pytestmark = pytest.mark.ros
RATE = 10.0
STATE_TOPIC = "/sim_robot/state"


def node(module: str, **params) -> list[str]:
    args = python_args("-m", f"qt_ros.nodes.{module}", "--ros-args")
    for name, value in params.items():
        args += ["-p", f"{name}:={value}"]
    return args


def answered_states(bag_path, times: np.ndarray) -> list[SimState]:
    """The privileged state each step answered: the one the simulator published with the step's
    frame (it publishes image, joint states, state in one tick). The recorder logs messages of
    different topics in its own order (a state can come after the commands answering it), so
    the state is found by its frame: the one logged between that frame and the next."""
    with BagReader.open(bag_path) as bag:
        images = np.asarray([t for _, _, t, _ in bag.messages({"/image"})])
        states = [(t, bag.deserialize(data, msgtype).data)
                  for _, msgtype, t, data in bag.messages({STATE_TOPIC})]
    state_times = np.asarray([t for t, _ in states])
    answered = []
    for t in times:
        k = np.searchsorted(images, t, side="right") - 1  # the step's frame, as converted
        end = images[k + 1] if k + 1 < len(images) else np.inf
        tick = np.flatnonzero((state_times >= images[k]) & (state_times < end))
        assert len(tick) == 1, f"{len(tick)} states logged with the frame of the step at {t}"
        answered.append(SimState.from_vector(states[tick[0]][1]))
    return answered


def test_demonstrations_convert_to_the_demonstrators_actions(spawn, env, tmp_path):
    record_dir = tmp_path / "demos"
    # lockstep as in the demo (config/sim.yaml): each tick waits for the decision answering it
    sim_params = {"control_rate": RATE, "image_width": 64, "image_height": 64, "seed": 40,
                  "lockstep": True}
    procs = [
        spawn(node("sim_robot_node", **sim_params), env=env, name="sim"),
        spawn(node("recorder_node", record_dir=record_dir, source="demonstration",
                   min_free_space_mb=1.0,
                   extra_topics=f'["{STATE_TOPIC}:std_msgs/msg/Float64MultiArray:reliable"]'),
              env=env, name="recorder"),
        spawn(node("demonstrator_node", control_rate=RATE, seed=40, noise=0.0,
                   failure_rate=0.0), env=env, name="demonstrator"),
    ]

    def alive() -> None:
        for p in procs:
            assert p.alive(), f"a node died:\n{p.output()[-3000:]}"

    episodes = []
    with EpisodeDriver(int(env["ROS_DOMAIN_ID"]), name="test_driver") as driver:
        driver.wait_for_service(Trigger, "sim_robot/reset", 90, alive)
        driver.wait_for_service(StartEpisode, "recorder/start_episode", 90, alive)
        driver.wait_for_service(SetBool, "demonstrator/enable", 90, alive)
        time.sleep(1.0)  # the latched instruction reaches the recorder (as in the demo)
        for _ in range(2):
            episodes.append(driver.run_episode("demonstrator", 8.0))
            alive()
    assert [e.outcome for e in episodes] == ["success", "success"], episodes

    mapping_file = tmp_path / "demo_mapping.yaml"
    mapping_file.write_text(demonstration_mapping(RATE))
    tok = ActionTokenizer()
    config = DemonstratorNodeConfig(control_rate=RATE, noise=0.0, failure_rate=0.0)
    for episode in episodes:
        converted = convert_bag(episode.bag, ConvertOptions(
            image_size=(16, 16), mapping=TopicMapping.from_yaml(mapping_file)))
        a = converted.arrays
        assert converted.record["dropped"] == {}, converted.record["dropped"]
        demonstrator = ScriptedDemonstrator(config.sim_config(), config.demonstrator_config())
        expected = np.stack([demonstrator.act(s)
                             for s in answered_states(episode.bag, a["timestamp"])])
        assert expected[-1, 7] == 1.0 and not expected[:-1, 7].any()  # the bag ends at "done"
        np.testing.assert_array_equal(a["action_bins"], tok.encode(expected),
                                      err_msg=f"{episode.episode_id}: converted bins")
        np.testing.assert_allclose(a["action"], expected, atol=1e-9)
        # the grasp is in the data: the first closed step stays where it is
        first_closed = int(np.argmax(a["action"][:, 6] > 0.5))
        assert first_closed > 0 and (a["action"][first_closed, :3] == 0).all()
