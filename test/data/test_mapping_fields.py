"""Topic mappings that read several fields of one message, and mappings that do not fit it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from qt_ros.data.episode_conversion import ConvertOptions, EpisodeError, convert_bag
from qt_ros.data.topic_mapping import TopicMapping

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000_000_000
STEPS = 6


def imu(k: int) -> tuple[list[float], list[float]]:
    """Step k's linear acceleration and angular velocity: different values on every axis."""
    return [0.1 * k, 0.2 * k, -0.1 * k], [-0.05 * k, 0.03 * k, 0.07 * k]


def write_imu_bag(path: Path) -> None:
    """A camera frame, then an Imu message 5 ms later, every 100 ms (a ``ros2 bag record``)."""
    store = get_typestore(Stores.ROS2_KILTED)
    t = store.types
    vec, header = t["geometry_msgs/msg/Vector3"], t["std_msgs/msg/Header"]
    stamp = t["builtin_interfaces/msg/Time"](sec=0, nanosec=0)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        camera = writer.add_connection("/camera", "sensor_msgs/msg/Image", typestore=store)
        sensor = writer.add_connection("/imu", "sensor_msgs/msg/Imu", typestore=store)
        for k in range(STEPS):
            ns = T0 + k * 100_000_000
            image = t["sensor_msgs/msg/Image"](
                header=header(stamp=stamp, frame_id="c"), height=2, width=2, encoding="rgb8",
                is_bigendian=0, step=6, data=np.full(12, k, np.uint8))
            writer.write(camera, ns, store.serialize_cdr(image, "sensor_msgs/msg/Image"))
            linear, angular = imu(k)
            msg = t["sensor_msgs/msg/Imu"](
                header=header(stamp=stamp, frame_id="imu"),
                orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
                orientation_covariance=np.zeros(9), angular_velocity=vec(*angular),
                angular_velocity_covariance=np.zeros(9), linear_acceleration=vec(*linear),
                linear_acceleration_covariance=np.zeros(9))
            writer.write(sensor, ns + 5_000_000, store.serialize_cdr(msg, "sensor_msgs/msg/Imu"))


def mapping(angular_fields: list[str]) -> dict:
    return {"image": "/camera", "instruction": "wave", "step": "/imu",
            "constants": {"gripper": 0.0},
            "actions": [
                {"topic": "/imu", "dims": ["x", "y", "z"], "scale": 0.01,
                 "fields": [f"linear_acceleration.{a}" for a in "xyz"]},
                {"topic": "/imu", "dims": ["roll", "pitch", "yaw"], "fields": angular_fields}]}


def test_two_entries_read_their_own_fields_of_one_message(tmp_path):
    write_imu_bag(tmp_path / "imu")
    m = TopicMapping.from_dict(mapping([f"angular_velocity.{a}" for a in "xyz"]))
    result = convert_bag(tmp_path / "imu", ConvertOptions(image_size=(2, 2), mapping=m))
    actions = result.arrays["action"]
    assert len(actions) == STEPS
    expected = np.asarray([np.r_[np.asarray(imu(k)[0]) * 0.01, imu(k)[1]] for k in range(STEPS)])
    # before: held values were keyed by topic, so x y z got the angular values too
    np.testing.assert_allclose(actions[:, :6], expected, rtol=1e-6, atol=1e-7)


def test_a_size_mismatch_names_entry_topic_and_sizes_and_leaves_no_dataset(tmp_path):
    write_imu_bag(tmp_path / "imu")
    bad = mapping(["angular_velocity.x", "angular_velocity.y"])  # two fields for three dims
    with pytest.raises(EpisodeError) as info:
        convert_bag(tmp_path / "imu", ConvertOptions(image_size=(2, 2),
                                                     mapping=TopicMapping.from_dict(bad)))
    text = str(info.value)
    assert "actions[1]" in text and "/imu" in text and "2 value(s)" in text and "3 dims" in text
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(bad))
    out = tmp_path / "dataset"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO),
                                                         os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "qt_ros.cli", "convert", str(tmp_path / "imu"),
                             "--mapping", str(tmp_path / "map.yaml"), "--out", str(out),
                             "--quiet"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "actions[1] (topic /imu)" in result.stdout and "unexpected" not in result.stdout
    assert not out.exists()  # nothing converted: no empty dataset directory left behind
