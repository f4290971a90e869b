"""A command step is one decision: every command answering a frame, whatever order they arrive in.

The bags are written with rosbags as ``ros2 bag record`` writes a teleoperation (or the demo's
demonstrator): a camera frame and a joint state per control period, then a twist and a gripper
command answering that frame, a few ms apart, in either order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from qt_ros.data.episode_conversion import ConvertOptions, convert_bag
from qt_ros.data.topic_mapping import MappingError, TopicMapping
from qt_ros.episodes.synthetic import frame_color

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
STEPS = 12
GRASP = 5  # the decision on frame GRASP is "stay + close"


def script() -> tuple[np.ndarray, np.ndarray]:
    """A grasp: move down, stay + close at frame GRASP, lift: x y z deltas (m) and gripper."""
    motion = np.zeros((STEPS, 3))
    motion[:GRASP] = [0.01, -0.005, -0.02]
    motion[GRASP + 1:] = [0.0, 0.0, 0.02]
    gripper = (np.arange(STEPS) >= GRASP).astype(np.float64)
    return motion, gripper


def write_bag(path: Path, *, arm_first: bool, gap_ms: float = 3.0, after_ms: float = 5.0,
              camera_hz: float = 10.0, gripper_every_step: bool = True,
              state_ms: float = 1.0, stamped_states: bool = False) -> None:
    """Frames at ``camera_hz`` from T0, one decision per 100 ms answering the frame at its
    start: twist (m/s at 10 Hz) and gripper ``after_ms`` after that frame, ``gap_ms`` apart.
    Each frame's joint state (position = frame index) is logged ``state_ms`` after it, its
    header stamped with the frame's stamp if ``stamped_states``, else 0."""
    store = get_typestore(Stores.ROS2_KILTED)
    t = store.types
    motion, gripper = script()
    msgs: list[tuple[int, str, object]] = []
    for k in range(int(STEPS * camera_hz / 10) + 1):
        ns = T0 + int(k * 1e9 / camera_hz)
        rgb = np.broadcast_to(np.asarray(frame_color(k), np.uint8), (4, 4, 3))
        msgs.append((ns, "/camera", t["sensor_msgs/msg/Image"](
            header=t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](
                sec=ns // 10**9, nanosec=ns % 10**9), frame_id="cam"),
            height=4, width=4, encoding="rgb8", is_bigendian=0, step=12,
            data=rgb.reshape(-1).copy())))
        stamp = ns if stamped_states else 0
        msgs.append((ns + int(state_ms * MS), "/joint_states", t["sensor_msgs/msg/JointState"](
            header=t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](
                sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=""),
            name=["k"], position=np.array([float(k)]),
            velocity=np.zeros(0), effort=np.zeros(0))))
    vec = t["geometry_msgs/msg/Vector3"]
    for s in range(STEPS):
        first = T0 + s * 100 * MS + int(after_ms * MS)
        arm_t, grip_t = (first, first + int(gap_ms * MS)) if arm_first else \
            (first + int(gap_ms * MS), first)
        v = motion[s] * 10.0  # m/s at 10 Hz
        msgs.append((arm_t, "/arm", t["geometry_msgs/msg/TwistStamped"](
            header=t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](
                sec=0, nanosec=0), frame_id=""),
            twist=t["geometry_msgs/msg/Twist"](linear=vec(x=v[0], y=v[1], z=v[2]),
                                               angular=vec(x=0.0, y=0.0, z=0.0)))))
        if gripper_every_step or s == GRASP:
            msgs.append((grip_t, "/gripper", t["std_msgs/msg/Float64"](data=gripper[s])))
    types = {"/camera": "sensor_msgs/msg/Image", "/joint_states": "sensor_msgs/msg/JointState",
             "/arm": "geometry_msgs/msg/TwistStamped", "/gripper": "std_msgs/msg/Float64"}
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=store)
                 for topic, msgtype in types.items()}
        for ns, topic, msg in sorted(msgs, key=lambda m: m[0]):
            writer.write(conns[topic], ns, store.serialize_cdr(msg, types[topic]))


def mapping(initial: float | None = None, **extra) -> TopicMapping:
    return TopicMapping.from_dict({
        "image": "/camera", "instruction": "pick up the block", "state": "/joint_states",
        "actions": [{"topic": "/arm", "dims": ["x", "y", "z", "roll", "pitch", "yaw"],
                     "scale": 0.1},
                    {"topic": "/gripper", "dims": ["gripper"], "initial": initial}],
        "step": "/arm", **extra})


def convert(path: Path, m: TopicMapping) -> dict[str, np.ndarray]:
    result = convert_bag(path, ConvertOptions(image_size=(4, 4), mapping=m))
    assert result.record["dropped"] == {}, result.record["dropped"]
    return result.arrays


def expected_actions() -> np.ndarray:
    motion, gripper = script()
    actions = np.zeros((STEPS, 8))
    actions[:, :3], actions[:, 6] = motion, gripper
    actions[-1, 7] = 1.0  # terminate at the last step
    return actions


@pytest.mark.parametrize("gap_ms", [0.5, 3.0, 40.0])
def test_arm_and_gripper_in_either_order_give_the_same_steps(tmp_path, gap_ms):
    arrays = {}
    for arm_first in (True, False):
        bag = tmp_path / f"arm_first_{arm_first}"
        write_bag(bag, arm_first=arm_first, gap_ms=gap_ms)
        arrays[arm_first] = convert(bag, mapping())
    a, b = arrays[True], arrays[False]
    np.testing.assert_allclose(a["action"], expected_actions(), atol=1e-6)
    for name in ("action", "action_bins", "frames", "state"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # the decision on frame k is step k, with the joint state of frame k
    colours = np.asarray([frame_color(k) for k in range(STEPS)], np.uint8)
    np.testing.assert_array_equal(a["frames"][:, 0, 0], colours)
    np.testing.assert_array_equal(a["state"][:, 0], np.arange(STEPS))


def test_the_gripper_closes_at_the_frame_it_answered(tmp_path):
    # The gripper is published once, after the twist (a teleop rig that sends it on change).
    write_bag(tmp_path / "bag", arm_first=True, gripper_every_step=False)
    a = convert(tmp_path / "bag", mapping(initial=0.0))
    np.testing.assert_allclose(a["action"], expected_actions(), atol=1e-6)
    grasp = a["action"][GRASP]
    assert (grasp[:3] == 0).all() and grasp[6] == 1.0  # "stay + close", never "lift + open"
    assert (a["frames"][GRASP, 0, 0] == frame_color(GRASP)).all()
    assert a["action"][GRASP - 1, 6] == 0.0 and a["action"][GRASP + 1, 2] > 0


def test_fixed_rate_steps_take_the_whole_decision_too(tmp_path):
    arrays = []
    for arm_first in (True, False):
        write_bag(tmp_path / f"b{arm_first}", arm_first=arm_first)
        arrays.append(convert(tmp_path / f"b{arm_first}", mapping(step=None, rate=10.0)))
    for a in arrays:
        np.testing.assert_allclose(a["action"], expected_actions(), atol=1e-6)
    np.testing.assert_array_equal(arrays[0]["frames"], arrays[1]["frames"])


def test_a_fast_camera_needs_a_step_window(tmp_path):
    # Camera at 200 Hz: a frame (every 5 ms) falls between the twist at +4 ms and the
    # gripper at +7 ms. By default the decision closes at that frame, so the gripper joins
    # the next step; a step_window of 10 ms keeps the decision whole.
    write_bag(tmp_path / "bag", arm_first=True, gap_ms=3.0, after_ms=4.0, camera_hz=200.0)
    late = convert(tmp_path / "bag", mapping(initial=0.0))
    assert late["action"][GRASP, 6] == 0.0 and late["action"][GRASP + 1, 6] == 1.0
    whole = convert(tmp_path / "bag", mapping(step_window=0.01))  # no initial value needed
    np.testing.assert_allclose(whole["action"], expected_actions(), atol=1e-6)
    colours = np.asarray([frame_color(20 * k) for k in range(STEPS)], np.uint8)
    np.testing.assert_array_equal(whole["frames"][:, 0, 0], colours)
    with pytest.raises(MappingError, match="step_window must be > 0"):
        mapping(step_window=0)


def test_the_state_of_a_step_is_the_state_of_its_frame(tmp_path):
    # The recorder logs messages of different topics in its own order: here each frame's
    # joint state is logged after the commands that answer the frame. Stamped with the frame's
    # stamp (as the simulator does), it is still the step's state, and the first step is kept.
    write_bag(tmp_path / "stamped", arm_first=True, state_ms=12.0, stamped_states=True)
    a = convert(tmp_path / "stamped", mapping())
    np.testing.assert_array_equal(a["state"][:, 0], np.arange(STEPS))
    np.testing.assert_allclose(a["action"], expected_actions(), atol=1e-6)
    # Without stamps the state is the latest one logged at the step: the frame before.
    write_bag(tmp_path / "unstamped", arm_first=True, state_ms=12.0)
    result = convert_bag(tmp_path / "unstamped", ConvertOptions(image_size=(4, 4),
                                                                mapping=mapping()))
    assert result.record["dropped"] == {"no_state": 1}
    np.testing.assert_array_equal(result.arrays["state"][:, 0], np.arange(STEPS - 1))
