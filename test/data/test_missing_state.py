"""Policy episodes that end before the robot's first state message: their steps are dropped and
counted, the other bags convert (before: "a state of 0 values, the dataset 3", a failed run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from qt_ros.data.dataset_reader import DatasetStore
from qt_ros.episodes.recorder import EpisodeRecorder, RecorderConfig
from qt_ros.episodes.synthetic import T0, write_episode
from qt_ros.qtransformer.tokenizer import ActionTokenizer

REPO = Path(__file__).resolve().parents[2]


def qt_ros(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "qt_ros.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def stateless_episode(record_dir: Path, episode_id: str, steps: int) -> Path:
    """A policy episode whose state topic is recorded but got no message before it ended."""
    rec = EpisodeRecorder(RecorderConfig(record_dir=record_dir), free_space_mb=lambda: 1e9)
    rec.add_topic("/image", "sensor_msgs/msg/Image", role="image")
    rec.add_topic("/policy_step", "qt_ros/msg/PolicyStep", role="policy_step")
    rec.add_topic("/joint_states", "sensor_msgs/msg/JointState", role="state")
    ts, tok = rec.typestore, ActionTokenizer()
    types = ts.types
    rec.start(instruction="pick up the red cube", episode_id=episode_id, now_ns=T0)
    for k in range(steps):
        t = T0 + k * 100_000_000
        header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9),
            frame_id="camera")
        image = types["sensor_msgs/msg/Image"](header=header, height=4, width=4, encoding="rgb8",
                                               is_bigendian=0, step=12,
                                               data=np.full(48, k, np.uint8))
        rec.write("/image", t, ts.serialize_cdr(image, "sensor_msgs/msg/Image").tobytes())
        bins = np.zeros(tok.num_dims, np.int32)
        step = types["qt_ros/msg/PolicyStep"](
            header=header, episode_id=episode_id, instruction="pick up the red cube",
            action_bins=bins, action=tok.decode(bins), dimension_names=list(tok.names),
            q_values=np.zeros(tok.num_dims, np.float32), terminate=False,
            inference_time=0.01, model_id="m")
        rec.write("/policy_step", t + 5_000_000,
                  ts.serialize_cdr(step, "qt_ros/msg/PolicyStep").tobytes())
    rec.end(outcome="failure", now_ns=T0 + steps * 100_000_000)
    return record_dir / episode_id


def test_episodes_without_state_are_dropped_with_a_count_and_the_rest_converts(tmp_path):
    bags = tmp_path / "episodes"
    early = stateless_episode(bags, "a-ended-early", 2)  # sorts first: before any state size
    good = [write_episode(bags, f"good{i}", 5, seed=i, state_dim=3)["bag"] for i in range(2)]
    out = tmp_path / "dataset"
    result = qt_ros("convert", str(early), str(good[0]), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 without a usable step" in result.stdout
    assert f"no steps {early}: every step dropped ({{'no_state': 2}}" in result.stdout
    assert "'no_state': 2" in result.stdout.splitlines()[0]  # in the dropped counts
    store = DatasetStore(out)
    assert [e["episode_id"] for e in store.episodes] == ["good0"] and store.state_dim == 3
    # appending to a dataset that has a state size: the same, whatever the order
    again = stateless_episode(bags, "b-ended-early", 3)
    result = qt_ros("convert", str(good[1]), str(again), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "'no_state': 3" in result.stdout
    assert [e["episode_id"] for e in DatasetStore(out).episodes] == ["good0", "good1"]


def test_a_robot_without_state_still_converts_with_no_state(tmp_path):
    bags = tmp_path / "episodes"
    for i in range(2):
        stateless_episode(bags, f"e{i}", 3)
    result = qt_ros("convert", str(bags), "--out", str(tmp_path / "dataset"), "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    store = DatasetStore(tmp_path / "dataset")
    assert len(store.episodes) == 2 and store.state_dim == 0 and store.num_steps == 6
