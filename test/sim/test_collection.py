"""``qt-ros sim collect``: real MuJoCo, real MCAP bags through the recorder core, real conversion.

One small collection (2 clean demonstrations + 2 noisy replays, 64x64) is shared by the module.
Each episode is re-run in-process with the library's own loop (``run_episode``: the same seed,
simulator and demonstrator) as the independent reference for the bags' frames, actions and labels.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from qt_ros.cli import main as cli
from qt_ros.data.dataset_reader import DatasetStore
from qt_ros.episodes.bag_reader import BagReader, episode_metadata
from qt_ros.episodes.catalog import EpisodeCatalog
from qt_ros.episodes.recorder_config import RecorderNodeConfig
from qt_ros.qtransformer.tokenizer import ActionTokenizer
from qt_ros.sim.collect_config import CollectConfig, CollectError
from qt_ros.sim.collection import MAPPING_FILE, collect, plan_episodes
from qt_ros.sim.demonstrator import MISTAKES, DemonstratorConfig, ScriptedDemonstrator
from qt_ros.sim.simulator import JOINT_NAMES, TabletopSim, run_episode

from conftest import REPO

SIZE = "64"


def summary_dir(summary) -> Path:
    return Path(summary.record_dir)


# The topics recorder_node records with config/sim.yaml, and their types.
NODE_TOPICS = {
    "/episode_events": "qt_ros/msg/EpisodeEvent",
    "/image": "sensor_msgs/msg/Image",
    "/instruction": "std_msgs/msg/String",
    "/arm_command": "geometry_msgs/msg/TwistStamped",
    "/gripper_command": "std_msgs/msg/Float64",
    "/policy_step": "qt_ros/msg/PolicyStep",
    "/joint_states": "sensor_msgs/msg/JointState",
    "/task_success": "std_msgs/msg/Bool",
}


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    record_dir = tmp_path_factory.mktemp("collect") / "episodes"
    config = CollectConfig(out=str(record_dir), demos=2, replays=2, image_size=SIZE, workers=1,
                           seed=3)
    summary = collect(config)
    return config, summary


@pytest.fixture(scope="module")
def reference(collected):
    """Each episode re-run in-process by ``run_episode`` (frames rendered)."""
    config, _ = collected
    out = {}
    with TabletopSim(config.sim_config()) as sim:
        for spec in plan_episodes(config):
            script = ScriptedDemonstrator(sim.config, DemonstratorConfig(
                noise=spec.noise, failure_rate=spec.failure_rate))
            script.reset(spec.seed)
            out[spec.episode_id(config.robot)] = run_episode(
                sim, script.act, spec.seed, max_steps=config.decisions, render=True)
    return out


def expected_actions(result) -> np.ndarray:
    """The steps a converted episode must hold: every decision, then on the last frame the
    hold the nodes send (no motion, the gripper as last commanded), marked terminate."""
    actions = np.stack(result.actions)
    if not result.terminated:  # the step limit: the frame after the last decision
        actions = np.concatenate([actions, np.zeros((1, actions.shape[1]))])
    actions[-1, :6] = 0.0
    actions[-1, 6] = actions[-2, 6] if len(actions) > 1 else 0.0
    actions[:, 7] = 0.0
    actions[-1, 7] = 1.0
    return actions


def test_bags_have_the_nodes_topics_types_and_tick_order(collected):
    config, summary = collected
    sim_yaml = yaml.safe_load((REPO / "config/sim.yaml").read_text())
    extra = sim_yaml["recorder"]["ros__parameters"]["extra_topics"]
    assert extra == ["task_success:std_msgs/msg/Bool:reliable"]  # else update NODE_TOPICS
    node = RecorderNodeConfig()
    assert NODE_TOPICS["/image"] == node.image_type and NODE_TOPICS["/joint_states"] == \
        node.state_type and NODE_TOPICS["/arm_command"] == node.arm_command_type
    assert len(summary.episodes) == 4
    for report in summary.episodes:
        bag_dir = summary_dir(summary) / report.episode_id
        with BagReader.open(bag_dir) as bag:
            assert bag.complete and not bag.problems
            assert {t: i.msgtype for t, i in bag.topics.items()} == NODE_TOPICS
            counts = {t: i.count for t, i in bag.topics.items()}
            assert counts["/image"] == counts["/joint_states"] == counts["/task_success"] == \
                counts["/arm_command"] == counts["/gripper_command"] == report.steps
            assert counts["/policy_step"] == 0 and counts["/episode_events"] == 2
            order = [topic for topic, *_ in bag.messages(
                ["/image", "/joint_states", "/task_success", "/arm_command", "/gripper_command"])]
            tick = ["/image", "/joint_states", "/task_success", "/arm_command", "/gripper_command"]
            assert order == tick * report.steps
            first = {}
            for topic, msgtype, _, data in bag.messages(["/image", "/joint_states"]):
                first.setdefault(topic, bag.deserialize(data, msgtype))
            image, joints = first["/image"], first["/joint_states"]
            assert (image.height, image.width, image.encoding) == (64, 64, "rgb8")
            assert image.header.stamp == joints.header.stamp  # one tick, one stamp
            assert list(joints.name) == list(JOINT_NAMES)
            meta = episode_metadata(bag)
            assert meta["source"] == "demonstration" and meta["robot"] == config.robot
            assert meta["outcome"] == report.outcome
        # and rosbags' own reader, knowing no qt_ros types, reads the bag
        with AnyReader([bag_dir], default_typestore=get_typestore(Stores.EMPTY)) as reader:
            assert sum(1 for _ in reader.messages()) == sum(counts.values())


def test_labels_are_the_success_detector_and_clean_demos_succeed(collected, reference):
    _, summary = collected
    catalog = EpisodeCatalog(summary_dir(summary)).episodes()
    assert sorted(catalog) == sorted(e.episode_id for e in summary.episodes)
    for report in summary.episodes:
        record, result = catalog[report.episode_id], reference[report.episode_id]
        assert record["status"] == "complete"
        assert record["outcome"] == report.outcome == ("success" if result.success
                                                       else "failure"), report
        assert record["reward"] == (1.0 if result.success else 0.0)
        assert [label["outcome"] for label in record["labels"]] == [report.outcome]
        assert record["collection"]["kind"] == report.kind
        assert report.steps == len(expected_actions(result))
    demos = [e for e in summary.episodes if e.kind == "demo"]
    assert [e.outcome for e in demos] == ["success", "success"]
    assert not any(e.mistake for e in demos)
    assert all(0.006 <= e.noise <= 0.01 for e in summary.episodes if e.kind == "replay")


def test_convert_gives_the_demonstrators_steps_and_frames(collected, reference, tmp_path):
    _, summary = collected
    record_dir = summary_dir(summary)
    dataset = tmp_path / "dataset"
    assert cli(["convert", str(record_dir), "--out", str(dataset), "--mapping",
                str(record_dir / MAPPING_FILE), "--image-size", SIZE, "--workers", "1",
                "--quiet"]) == 0
    store = DatasetStore(dataset)
    tok = ActionTokenizer()
    by_id = {e["episode_id"]: i for i, e in enumerate(store.episodes)}
    assert sorted(by_id) == sorted(e.episode_id for e in summary.episodes)
    for report in summary.episodes:
        i, result = by_id[report.episode_id], reference[report.episode_id]
        record = store.episodes[i]
        assert record["length"] == report.steps and record["dropped"] == {}
        assert record["outcome"] == report.outcome and record["source"] == "demonstration"
        expected = expected_actions(result)
        # every step carries the decision made on its frame, the gripper included
        np.testing.assert_array_equal(store.episode_field(i, "action_bins"), tok.encode(expected),
                                      err_msg=report.episode_id)
        np.testing.assert_allclose(store.episode_field(i, "action"), expected, atol=1e-6)
        frames = store.episode_field(i, "frames")
        np.testing.assert_array_equal(frames[:len(result.frames)], np.stack(result.frames))
        state = store.episode_field(i, "state")
        assert state.shape == (report.steps, len(JOINT_NAMES))
        np.testing.assert_allclose(state[:len(result.states), :3],
                                   [s.ee for s in result.states], atol=1e-6)


def episode_content(bag_dir) -> dict[str, list]:
    """A bag's messages without their times: what must not depend on the worker."""
    out: dict[str, list] = {}
    with BagReader.open(bag_dir) as bag:
        for topic, msgtype, _, data in bag.messages(
                ["/image", "/joint_states", "/arm_command", "/gripper_command"]):
            msg = bag.deserialize(data, msgtype)
            value = {"/image": lambda m: bytes(m.data),
                     "/joint_states": lambda m: m.position.tolist(),
                     "/arm_command": lambda m: [m.twist.linear.x, m.twist.linear.y,
                                                m.twist.linear.z],
                     "/gripper_command": lambda m: m.data}[topic](msg)
            out.setdefault(topic, []).append(value)
    return out


def test_two_workers_record_the_same_episodes_as_one(collected, tmp_path):
    config, summary = collected
    two = collect(CollectConfig(out=str(tmp_path / "two"), demos=2, replays=2,
                                image_size=SIZE, workers=2, seed=config.seed))
    assert two.workers == 2
    assert [(e.episode_id, e.outcome, e.steps, e.mistake) for e in two.episodes] == \
        [(e.episode_id, e.outcome, e.steps, e.mistake) for e in summary.episodes]
    catalog = EpisodeCatalog(tmp_path / "two").episodes()
    assert sorted(catalog) == sorted(e.episode_id for e in summary.episodes)
    assert all(r["status"] == "complete" for r in catalog.values())
    for report in summary.episodes:
        assert episode_content(tmp_path / "two" / report.episode_id) == \
            episode_content(summary_dir(summary) / report.episode_id), report.episode_id


def test_replays_are_noisy_with_scripted_mistakes_demos_are_clean():
    config = CollectConfig(out="unused", demos=50, replays=200, seed=7)
    specs = plan_episodes(config)
    assert [s.seed for s in specs] == list(range(7, 257))
    demos, replays = specs[:50], specs[50:]
    assert all(s.kind == "demo" and s.noise == 0.002 and s.failure_rate == 0 for s in demos)
    assert all(s.kind == "replay" and 0.006 <= s.noise <= 0.01 for s in replays)
    assert len({s.noise for s in replays}) == len(replays)  # drawn per episode

    def mistake(spec):
        script = ScriptedDemonstrator(config.sim_config(), DemonstratorConfig(
            noise=spec.noise, failure_rate=spec.failure_rate))
        script.reset(spec.seed)
        return script.mistake

    mistakes = [mistake(s) for s in replays]
    assert 0.5 < sum(m is not None for m in mistakes) / len(replays) < 0.7  # rate 0.6
    assert set(mistakes) - {None} == set(MISTAKES)
    assert not any(mistake(s) for s in demos)


@pytest.mark.parametrize("args, message", [
    (["--demos", "0"], "nothing to collect"),
    (["--demos", "-1", "--replays", "2"], "nothing to collect"),
    (["--image-size", "4x"], "--image-size must be N or HxW"),
    (["--replay-noise", "0.01", "0.006"], "LOW <= HIGH"),
    (["--replay-mistake-rate", "1.5"], "--replay-mistake-rate must be in [0, 1]"),
    (["--workers", "-2"], "--workers must be >= 0"),
    (["--task", "stack"], "invalid choice"),
])
def test_bad_options_give_clear_errors(args, message, tmp_path, capsys):
    try:
        status = cli(["sim", "collect", "--out", str(tmp_path / "x"), *args])
    except SystemExit as exc:  # argparse's own refusals
        status = exc.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_collecting_the_same_seeds_again_is_refused(collected, capsys):
    config, summary = collected
    before = sorted(p.name for p in summary_dir(summary).iterdir())
    status = cli(["sim", "collect", "--out", summary.record_dir, "--demos", "1",
                  "--seed", str(config.seed), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "already holds 1 of these episodes" in err and "--seed 7" in err
    assert "--resume" in err
    assert sorted(p.name for p in summary_dir(summary).iterdir()) == before
    with pytest.raises(CollectError, match="--out RECORD_DIR is required"):
        CollectConfig(out="")


def test_cli_collects_prints_a_summary_and_bench_reports_json(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli(["sim", "collect", "--out", str(out), "--demos", "1", "--replays", "1",
                "--image-size", "32", "--workers", "1", "--seed", "11", "--quiet",
                "--json", str(tmp_path / "summary.json")]) == 0
    text = capsys.readouterr().out
    assert "collected 2 episode(s)" in text and f"--mapping {out}/{MAPPING_FILE}" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["by_kind"]["demo"]["successes"] == 1
    assert summary["steps_per_s"] > 0
    assert cli(["bench", "collect", "--demos", "1", "--replays", "1", "--image-size", "32",
                "--workers", "1"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert bench["benchmark"] == "collect" and bench["image"] == "32x32"
    assert bench["runs"][0]["steps"] > 0 and bench["runs"][0]["steps_per_s"] > 0


def test_ctrl_c_finishes_the_running_episodes_and_resume_collects_the_rest(tmp_path):
    out = tmp_path / "interrupted"
    args = ["sim", "collect", "--out", str(out), "--demos", "12", "--image-size", "32",
            "--seed", "20"]
    proc = subprocess.Popen([sys.executable, "-m", "qt_ros.cli", *args, "--workers", "2",
                             "--quiet"], cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "catalog.json").exists() and sum(
                    r["status"] == "complete"
                    for r in EpisodeCatalog(out).episodes().values()) >= 2:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C)" in err and "--resume" in err
    catalog = EpisodeCatalog(out).episodes()
    assert 2 <= len(catalog) < 12
    assert {r["status"] for r in catalog.values()} == {"complete"}
    bags = [p for p in out.iterdir() if p.is_dir()]
    assert sorted(p.name for p in bags) == sorted(catalog)  # no half-written bag
    assert all(BagReader.open(p).complete for p in bags)

    assert cli([*args, "--workers", "1", "--quiet", "--resume"]) == 0
    catalog = EpisodeCatalog(out).episodes()
    assert sorted(catalog) == [f"qt_ros_sim-demo-{seed:06d}" for seed in range(20, 32)]
    assert {r["status"] for r in catalog.values()} == {"complete"}
    assert cli([*args, "--quiet", "--resume"]) == 0  # nothing left: nothing recorded
    assert len(EpisodeCatalog(out).episodes()) == 12


def test_defaults_are_those_of_config_sim_yaml():
    """The clean demonstrations are the sim set-up's demonstrator; the bags its recorder's."""
    shipped = yaml.safe_load((REPO / "config/sim.yaml").read_text())
    demonstrator = shipped["demonstrator"]["ros__parameters"]
    recorder = shipped["recorder"]["ros__parameters"]
    sim = shipped["sim_robot"]["ros__parameters"]
    config = CollectConfig(out="unused")
    assert config.demo_noise == demonstrator["noise"]
    assert config.robot == recorder["robot"]
    assert config.image_hw == (sim["image_height"], sim["image_width"])
    assert 1.0 / config.sim_config().control_period == sim["control_rate"] == \
        demonstrator["control_rate"]
    assert DemonstratorConfig().max_step == demonstrator["max_step"]
    assert DemonstratorConfig().quantum == demonstrator["quantum"]
