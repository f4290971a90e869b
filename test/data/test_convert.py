"""``qt-ros convert``: real bags (recorder format and plain rosbag2 demos) into the dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from qt_ros.data.dataset_reader import DatasetStore
from qt_ros.data.episode_conversion import ConvertOptions, EpisodeError, convert_bag
from qt_ros.data.returns import mc_returns
from qt_ros.episodes.recorder import EpisodeRecorder, RecorderConfig
from qt_ros.episodes.synthetic import frame_color, write_episode
from qt_ros.qtransformer.tokenizer import ActionTokenizer

REPO = Path(__file__).resolve().parents[2]
GAMMA = 0.9


def qt_ros(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "qt_ros.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def episode_arrays(store: DatasetStore, episode_id: str) -> tuple[dict, dict]:
    index = next(i for i, e in enumerate(store.episodes) if e["episode_id"] == episode_id)
    fields = ("frames", "action", "action_bins", "reward", "done", "mc_return", "state")
    return store.episodes[index], {f: np.asarray(store.episode_field(index, f)) for f in fields}


def assert_episode_matches(store: DatasetStore, truth: dict) -> None:
    record, a = episode_arrays(store, truth["episode_id"])
    n = len(truth["bins"])
    assert record["length"] == n and record["dropped"] == {}
    assert store.instructions[record["instruction"]] == truth["instruction"]
    assert record["outcome"] == truth["outcome"]
    np.testing.assert_array_equal(a["action_bins"], truth["bins"])
    np.testing.assert_allclose(a["action"], truth["actions"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a["state"], truth["states"], rtol=1e-6)
    colours = np.asarray([frame_color(k) for k in truth["image_for_step"]], dtype=np.uint8)
    np.testing.assert_array_equal(a["frames"][:, 0, 0], colours)  # the right image, in order
    assert (a["frames"] == a["frames"][:, :1, :1]).all()  # constant frames stay constant
    reward = np.zeros(n, np.float32)
    reward[-1] = truth["reward"]
    np.testing.assert_array_equal(a["reward"], reward)
    np.testing.assert_array_equal(a["done"], (np.arange(n) == n - 1).astype(np.uint8))
    np.testing.assert_allclose(a["mc_return"], truth["reward"] * GAMMA ** np.arange(n)[::-1],
                               rtol=1e-6)


def test_recorder_bags_convert_exactly_and_append_without_rewriting(tmp_path):
    bags, out = tmp_path / "episodes", tmp_path / "dataset"
    first = [write_episode(bags, f"ep{i}", 8 + i, state_dim=3, seed=i,
                           outcome=("success", "failure")[i % 2]) for i in range(3)]
    result = qt_ros("convert", str(bags), "--out", str(out), "--gamma", str(GAMMA),
                    "--image-size", "16x24", "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "converted 3 bag(s) (27 steps, 0 dropped)" in result.stdout
    store = DatasetStore(out)
    assert store.image_size == (16, 24) and store.state_dim == 3
    assert [e["episode_id"] for e in store.episodes] == ["ep0", "ep1", "ep2"]
    for truth in first:
        assert_episode_matches(store, truth)
    shard_files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "shards").rglob("*")
                   if p.is_file()}

    # a second run: the old bags are skipped, the new one goes into a new shard; a label
    # given after the conversion is pointed out
    new = write_episode(bags, "ep3", 5, state_dim=3, seed=7, instruction="close the lid")
    EpisodeRecorder(RecorderConfig(record_dir=bags)).label("ep1", "success")
    result = qt_ros("convert", str(bags), "--out", str(out), "--workers", "1", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "converted 1 bag(s) (5 steps" in result.stdout
    assert "skipped 3 already converted" in result.stdout
    assert "ep1: relabelled success after its conversion (failure in the dataset)" in \
        result.stdout
    assert "dataset " + str(out) + ": 4 episode(s), 32 step(s)" in result.stdout
    for path, (mtime, data) in shard_files.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data, path
    store = DatasetStore(out)
    assert len({e["shard"] for e in store.episodes}) == 2
    assert store.instructions == ["pick up the red cube", "close the lid"]
    assert_episode_matches(store, new)
    stats = store.stats()
    assert stats["action"]["count"] == 32 and len(stats["action"]["mean"]) == 8


def test_parallel_and_serial_conversion_give_the_same_dataset(tmp_path):
    bags = tmp_path / "episodes"
    for i in range(4):
        write_episode(bags, f"ep{i}", 6, seed=i)
    for workers in (1, 2):
        result = qt_ros("convert", str(bags), "--out", str(tmp_path / f"d{workers}"),
                        "--workers", str(workers), "--quiet")
        assert result.returncode == 0, result.stderr
    d1, d2 = DatasetStore(tmp_path / "d1"), DatasetStore(tmp_path / "d2")
    assert [e["key"] for e in d1.episodes] == [e["key"] for e in d2.episodes]
    for name in ("frames", "action_bins", "mc_return"):
        for i in range(4):
            np.testing.assert_array_equal(d1.episode_field(i, name), d2.episode_field(i, name))


def _break_bags(bags: Path) -> dict[str, str]:
    """Bags that cannot be converted, each with the words its error must contain."""
    write_episode(bags, "corrupt", 20, image_size=(120, 160))
    data = bags / "corrupt" / "corrupt.mcap"
    with open(data, "rb") as f:  # garble the record header of a chunk in the middle
        chunks = make_reader(f).get_summary().chunk_indexes
    start = chunks[len(chunks) // 2].chunk_start_offset
    raw = bytearray(data.read_bytes())
    raw[start + 9: start + 9 + 64] = b"\xff" * 64
    data.write_bytes(bytes(raw))
    write_episode(bags, "truncated", 20, image_size=(120, 160))
    data = bags / "truncated" / "truncated.mcap"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    write_episode(bags, "wrong_encoding", 6, encoding="yuv8")  # an encoding it cannot read
    store = get_typestore(Stores.ROS2_KILTED)
    with Writer(bags / "empty", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        writer.add_connection("/image", "sensor_msgs/msg/Image", typestore=store)
    # a recorder bag whose camera topic never got a message
    rec = EpisodeRecorder(RecorderConfig(record_dir=bags), free_space_mb=lambda: 1e9)
    rec.add_topic("/image", "sensor_msgs/msg/Image", role="image")
    rec.add_topic("/policy_step", "qt_ros/msg/PolicyStep", role="policy_step")
    rec.start(instruction="nothing to see", episode_id="no_images", now_ns=1)
    rec.end(now_ns=2)
    (bags / "not_a_bag").mkdir()
    (bags / "not_a_bag" / "notes.txt").write_text("hello")
    return {"corrupt": "damaged (episode corrupt)", "truncated": "qt-ros repair",
            "wrong_encoding": "unsupported image encoding 'yuv8'", "empty": "empty",
            "no_images": "has no messages on image topic '/image'"}


def test_broken_bags_are_reported_and_the_others_converted(tmp_path):
    bags, out = tmp_path / "episodes", tmp_path / "dataset"
    good = [write_episode(bags, f"good{i}", 7, seed=i) for i in range(2)]
    expected = _break_bags(bags)
    result = qt_ros("convert", str(bags), str(bags / "not_a_bag"), "--out", str(out),
                    "--gamma", str(GAMMA), "--quiet")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "converted 2 bag(s)" in result.stdout
    assert f"failed {len(expected) + 1}" in result.stdout
    lines = result.stdout.splitlines()
    for name, words in expected.items():
        line = next((x for x in lines if f"FAILED {bags / name}:" in x), None)
        assert line is not None, f"{name} not reported:\n{result.stdout}"
        assert words in line, line
    assert any(f"FAILED {bags / 'not_a_bag'}: " in x and "not a rosbag2 bag" in x
               for x in lines)
    assert "Traceback" not in result.stdout + result.stderr
    store = DatasetStore(out)
    for truth in good:
        assert_episode_matches(store, truth)


def test_stale_images_drop_steps_and_are_counted(tmp_path):
    # images at 2 Hz, steps at 10 Hz: most steps see an image older than 0.2 s
    truth = write_episode(tmp_path, "slow_camera", 20, image_rate=2.0)
    result = convert_bag(truth["bag"], ConvertOptions(image_size=(8, 8)))
    kept = result.record["length"]
    assert result.record["dropped"]["stale_image"] == 20 - kept and 0 < kept < 20
    ages = result.arrays["image_age"]
    assert (ages <= 0.2).all()
    # with a tolerant age every step is kept
    result = convert_bag(truth["bag"], ConvertOptions(image_size=(8, 8), max_image_age=1.0))
    assert result.record["length"] == 20


def test_policy_steps_with_another_tokenizer_are_refused(tmp_path):
    truth = write_episode(tmp_path, "e", 4)
    other = ActionTokenizer.uniform(["x", "y", "terminate"], [-1, -1, 0], [1, 1, 1], 64,
                                    terminate="terminate")
    with pytest.raises(EpisodeError, match="tokenizer"):
        convert_bag(truth["bag"], ConvertOptions(tokenizer=other.to_config()))


# ------------------------------------------------------------- plain `ros2 bag record` demos

def write_demo_bag(path: Path, storage: StoragePlugin, steps: int = 12,
                   compressed: bool = False) -> dict:
    """A teleoperation bag as rosbag2 writes it: camera 30 Hz (bgr8, or png CompressedImage on
    /camera/image_raw/compressed), twist commands 10 Hz, gripper commands on change, joint
    states 50 Hz; no instruction topic."""
    store = get_typestore(Stores.ROS2_KILTED)
    t = store.types
    t0 = 1_700_000_000_000_000_000
    msgs: list[tuple[int, str, object, str]] = []

    def header(ns: int):
        return t["std_msgs/msg/Header"](
            stamp=t["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
            frame_id="base")

    duration = steps / 10
    for k in range(int(duration * 30) + 1):
        ns = t0 + int(k * 1e9 / 30)
        rgb = np.broadcast_to(np.asarray(frame_color(k), np.uint8), (6, 8, 3))
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        if compressed:
            png = np.frombuffer(cv2.imencode(".png", bgr)[1].tobytes(), np.uint8)
            msgs.append((ns, "/camera/image_raw/compressed",
                         t["sensor_msgs/msg/CompressedImage"](header=header(ns), format="png",
                                                              data=png),
                         "sensor_msgs/msg/CompressedImage"))
            continue
        msgs.append((ns, "/camera/image_raw", t["sensor_msgs/msg/Image"](
            header=header(ns), height=6, width=8, encoding="bgr8", is_bigendian=0, step=24,
            data=bgr.reshape(-1)), "sensor_msgs/msg/Image"))
    for k in range(int(duration * 50)):
        ns = t0 + int(k * 1e9 / 50)
        msgs.append((ns, "/joint_states", t["sensor_msgs/msg/JointState"](
            header=header(ns), name=["a", "b"], position=np.array([k * 0.01, -k * 0.01]),
            velocity=np.zeros(0), effort=np.zeros(0)), "sensor_msgs/msg/JointState"))
    twists, grips, image_for_step = [], [], []
    gripper = 0.0
    for s in range(steps):
        ns = t0 + int(s * 1e8) + 7_000_000
        v = np.array([0.1, -0.2, 0.05, 0.0, 0.5, -0.5]) * ((s % 3) - 1)
        vec = t["geometry_msgs/msg/Vector3"]
        msgs.append((ns, "/servo/delta_twist_cmds", t["geometry_msgs/msg/TwistStamped"](
            header=header(ns), twist=t["geometry_msgs/msg/Twist"](
                linear=vec(x=v[0], y=v[1], z=v[2]), angular=vec(x=v[3], y=v[4], z=v[5]))),
            "geometry_msgs/msg/TwistStamped"))
        if s == steps // 2:
            gripper = 1.0
            msgs.append((ns - 1000, "/gripper_command", t["std_msgs/msg/Float64"](data=1.0),
                         "std_msgs/msg/Float64"))
        twists.append(v * 0.1)  # scale 0.1 s per step in the mapping
        grips.append(gripper)
        image_for_step.append(int((s * 0.1 + 0.007) * 30))
    msgs.sort(key=lambda m: m[0])
    with Writer(path, version=9, storage_plugin=storage) as writer:
        conns = {}
        camera = ("/camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage") \
            if compressed else ("/camera/image_raw", "sensor_msgs/msg/Image")
        for topic, msgtype in [camera,
                               ("/joint_states", "sensor_msgs/msg/JointState"),
                               ("/servo/delta_twist_cmds", "geometry_msgs/msg/TwistStamped"),
                               ("/gripper_command", "std_msgs/msg/Float64")]:
            conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
        for ns, topic, msg, msgtype in msgs:
            writer.write(conns[topic], ns, store.serialize_cdr(msg, msgtype))
    return {"twists": np.asarray(twists), "grips": np.asarray(grips),
            "image_for_step": image_for_step}


MAPPING = {
    "image": "/camera/image_raw",
    "instruction": "put the cube in the bowl",
    "state": {"topic": "/joint_states"},
    "actions": [
        {"topic": "/servo/delta_twist_cmds", "dims": ["x", "y", "z", "roll", "pitch", "yaw"],
         "scale": 0.1},
        {"topic": "/gripper_command", "dims": ["gripper"], "initial": 0.0},
    ],
    "step": "/servo/delta_twist_cmds",
    "max_image_age": 0.1,
    "labels": {"demo_failed": "failure"},
    "instructions": {"demo_failed": "knock the cube over"},
}


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_teleop_demo_bags_convert_with_a_topic_mapping(tmp_path, storage):
    bags, out = tmp_path / "demos", tmp_path / "dataset"
    truth = write_demo_bag(bags / "demo_ok", storage)
    write_demo_bag(bags / "demo_failed", storage)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump(MAPPING))
    result = qt_ros("convert", str(bags), "--out", str(out), "--mapping", str(mapping),
                    "--gamma", str(GAMMA), "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    store = DatasetStore(out)
    tok = ActionTokenizer.from_config(store.tokenizer_config)
    rec, a = episode_arrays(store, "demo_ok")
    n = len(truth["twists"])
    assert rec["length"] == n and rec["source"] == "demonstration"
    assert rec["outcome"] == "success" and rec["reward"] == 1.0
    assert store.instructions[rec["instruction"]] == "put the cube in the bowl"
    expected = np.zeros((n, tok.num_dims))
    expected[:, :6] = truth["twists"]
    expected[:, 6] = truth["grips"]
    expected[-1, 7] = 1.0  # terminate at the last step of a demonstration
    np.testing.assert_allclose(a["action"], expected, atol=1e-6)
    np.testing.assert_array_equal(a["action_bins"], tok.encode(expected))
    colours = np.asarray([frame_color(k) for k in truth["image_for_step"]], np.uint8)
    np.testing.assert_array_equal(a["frames"][:, 0, 0], colours)  # bgr8 -> RGB, aligned
    assert a["state"].shape == (n, 2)
    np.testing.assert_allclose(a["mc_return"], GAMMA ** np.arange(n)[::-1], rtol=1e-6)
    failed, fa = episode_arrays(store, "demo_failed")
    assert failed["outcome"] == "failure" and fa["reward"].sum() == 0.0
    assert store.instructions[failed["instruction"]] == "knock the cube over"

    # a fixed control rate instead of the command stream
    mapping.write_text(yaml.safe_dump({**MAPPING, "step": None, "rate": 5.0}))
    result = qt_ros("convert", str(bags / "demo_ok"), "--out", str(tmp_path / "d5"),
                    "--mapping", str(mapping), "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert 5 <= DatasetStore(tmp_path / "d5").num_steps <= 7


def test_compressed_camera_frames_are_decoded(tmp_path):
    truth = write_demo_bag(tmp_path / "demo", StoragePlugin.MCAP, steps=6, compressed=True)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump({**MAPPING, "image": "/camera/image_raw/compressed"}))
    result = qt_ros("convert", str(tmp_path / "demo"), "--out", str(tmp_path / "d"),
                    "--mapping", str(mapping), "--image-size", "6x8", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    frames = np.asarray(DatasetStore(tmp_path / "d").episode_field(0, "frames"))
    colours = np.asarray([frame_color(k) for k in truth["image_for_step"]], np.uint8)
    np.testing.assert_array_equal(frames[:, 0, 0], colours)


def test_demo_bag_without_mapping_or_with_a_bad_one(tmp_path):
    write_demo_bag(tmp_path / "demo", StoragePlugin.MCAP)
    result = qt_ros("convert", str(tmp_path / "demo"), "--out", str(tmp_path / "d"), "--quiet")
    assert result.returncode == 1
    assert "not a qt_ros episode bag" in result.stdout and "--mapping" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**MAPPING, "actions": [
        {"topic": "/servo/delta_twist_cmds", "dims": ["x", "y", "z"]}]}))
    result = qt_ros("convert", str(tmp_path / "demo"), "--out", str(tmp_path / "d"),
                    "--mapping", str(bad), "--quiet")
    assert result.returncode == 1
    assert "no source for action dimension(s) roll, pitch, yaw, gripper" in result.stdout
    bad.write_text("imgae: /camera\n")
    result = qt_ros("convert", str(tmp_path / "demo"), "--out", str(tmp_path / "d"),
                    "--mapping", str(bad))
    assert result.returncode == 2 and "unknown key(s) ['imgae']" in result.stderr


def test_appending_with_other_options_is_refused(tmp_path):
    write_episode(tmp_path / "b", "e0", 4)
    assert qt_ros("convert", str(tmp_path / "b"), "--out", str(tmp_path / "d"),
                  "--quiet").returncode == 0
    result = qt_ros("convert", str(tmp_path / "b"), "--out", str(tmp_path / "d"),
                    "--image-size", "64", "--quiet")
    assert result.returncode == 2 and "different image size" in result.stderr


def test_dataset_info_summarizes_and_plots(tmp_path):
    bags, out = tmp_path / "episodes", tmp_path / "dataset"
    for i, outcome in enumerate(["success", "failure", "success"]):
        write_episode(bags, f"ep{i}", 5 + i, outcome=outcome, seed=i)
    assert qt_ros("convert", str(bags), "--out", str(out), "--quiet").returncode == 0
    result = qt_ros("dataset", "info", str(out))
    assert result.returncode == 0, result.stderr
    assert "episodes 3, steps 18" in result.stdout
    assert "outcomes: failure 1, success 2" in result.stdout
    assert "pick up the red cube" in result.stdout
    png = out / "info.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    info = json.loads(qt_ros("dataset", "info", str(out), "--json", "--no-plot").stdout)
    assert info["steps"] == 18 and info["outcomes"] == {"success": 2, "failure": 1}
    missing = qt_ros("dataset", "info", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "not a qt_ros dataset" in missing.stderr


def test_mc_returns():
    np.testing.assert_allclose(mc_returns(np.array([0, 0, 1.0]), 0.5), [0.25, 0.5, 1.0])
    np.testing.assert_allclose(mc_returns(np.array([1.0, 0, 1.0]), 0.5), [1.25, 0.5, 1.0])
