"""Arm and gripper adapters: message types, fields, unit conversion and hold commands."""

from __future__ import annotations

import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TwistStamped
from std_msgs.msg import Float64, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from qt_ros.nodes.adapters import (
    AdapterConfigError,
    ArmAdapter,
    ArmConfig,
    GripperAdapter,
    GripperConfig,
)

STAMP = Time(sec=12, nanosec=500)
JOINTS = ("j1", "j2", "j3")


def test_twist_converts_per_step_deltas_to_velocities_in_the_frame():
    arm = ArmAdapter(ArmConfig("twist", "delta", 6, control_period=0.1, frame_id="tool0"))
    msg = arm.command(np.array([0.01, -0.02, 0.03, 0.1, -0.2, 0.3]), STAMP)
    assert isinstance(msg, TwistStamped) and arm.msg_type is TwistStamped
    assert msg.header.frame_id == "tool0" and msg.header.stamp == STAMP
    lin, ang = msg.twist.linear, msg.twist.angular
    np.testing.assert_allclose([lin.x, lin.y, lin.z, ang.x, ang.y, ang.z],
                               [0.1, -0.2, 0.3, 1.0, -2.0, 3.0])
    hold = arm.hold(STAMP)
    assert isinstance(hold, TwistStamped) and hold.header.frame_id == "tool0"
    assert [hold.twist.linear.x, hold.twist.angular.z] == [0.0, 0.0]


def test_twist_with_three_dimensions_and_absolute_values():
    arm = ArmAdapter(ArmConfig("twist", "absolute", 3, control_period=0.1))
    msg = arm.command(np.array([0.05, 0.0, -0.05]), STAMP)
    assert [msg.twist.linear.x, msg.twist.linear.z, msg.twist.angular.x] == [0.05, -0.05, 0.0]
    np.testing.assert_array_equal(arm.rest(None), np.zeros(3))


def test_joint_trajectory_delta_adds_to_the_measured_positions():
    arm = ArmAdapter(ArmConfig("joint_trajectory", "delta", 3, control_period=0.1,
                               joint_names=JOINTS))
    assert arm.needs_joint_positions
    measured = np.array([0.5, -1.0, 1.5])
    msg = arm.command(np.array([0.01, 0.02, -0.03]), STAMP, measured)
    assert isinstance(msg, JointTrajectory) and msg.joint_names == list(JOINTS)
    assert len(msg.points) == 1
    np.testing.assert_allclose(msg.points[0].positions, [0.51, -0.98, 1.47])
    assert (msg.points[0].time_from_start.sec, msg.points[0].time_from_start.nanosec) == (0, 10**8)
    assert msg.header.stamp.sec == 0  # "start now" for joint_trajectory_controller
    with pytest.raises(ValueError, match="joint_states"):
        arm.command(np.zeros(3), STAMP, None)
    hold = arm.hold(STAMP, np.array([0.6, -0.9, 1.4]))
    np.testing.assert_allclose(hold.points[0].positions, [0.6, -0.9, 1.4])


def test_joint_trajectory_absolute_holds_the_last_target_without_joint_states():
    arm = ArmAdapter(ArmConfig("joint_trajectory", "absolute", 3, control_period=0.1,
                               joint_names=JOINTS, trajectory_duration=0.5))
    assert not arm.needs_joint_positions
    assert arm.hold(STAMP) is None  # nothing was sent: nothing to hold
    assert np.isnan(arm.rest(None)).all()
    msg = arm.command(np.array([0.1, 0.2, 0.3]), STAMP)
    assert msg.points[0].time_from_start.nanosec == 5 * 10**8
    np.testing.assert_allclose(arm.hold(STAMP).points[0].positions, [0.1, 0.2, 0.3])


@pytest.mark.parametrize("interface, expected, hold", [
    ("velocity", [0.1, 0.2, 0.3], [0.0, 0.0, 0.0]),
    ("position", [1.01, 1.02, 1.03], [1.0, 1.0, 1.0]),
])
def test_float64_array_position_or_velocity(interface, expected, hold):
    arm = ArmAdapter(ArmConfig("float64_array", "delta", 3, control_period=0.1,
                               joint_names=JOINTS, float64_array_interface=interface))
    measured = np.ones(3)
    msg = arm.command(np.array([0.01, 0.02, 0.03]), STAMP, measured)
    assert isinstance(msg, Float64MultiArray) and arm.msg_type is Float64MultiArray
    np.testing.assert_allclose(msg.data, expected)
    np.testing.assert_allclose(arm.hold(STAMP, measured).data, hold)


@pytest.mark.parametrize("config, message", [
    (dict(adapter="servo"), "arm_adapter 'servo'"),
    (dict(action="relative"), "arm_action 'relative'"),
    (dict(num_dims=4), "needs 3 .* or 6"),
    (dict(adapter="joint_trajectory", joint_names=("a",)), "one joint in joint_names"),
    (dict(adapter="float64_array", float64_array_interface="effort", joint_names=JOINTS * 2),
     "float64_array_interface 'effort'"),
])
def test_arm_configuration_errors_name_the_parameter(config, message):
    with pytest.raises(AdapterConfigError, match=message):
        ArmConfig(**config)


def test_gripper_adapters_map_the_policy_range_to_positions():
    f = GripperAdapter(GripperConfig("float64", 0.0, 1.0, open_position=0.08,
                                     closed_position=0.0))
    assert f.hold() is None
    msg = f.command(1.0)
    assert isinstance(msg, Float64) and msg.data == pytest.approx(0.0)
    assert f.command(0.25).data == pytest.approx(0.06)
    assert f.hold().data == pytest.approx(0.06)  # re-sends the last position
    arr = GripperAdapter(GripperConfig("float64_array", 0.0, 1.0, 0.0, 0.8,
                                       joint_names=("left", "right")))
    assert arr.command(0.5).data.tolist() == pytest.approx([0.4, 0.4])
    traj = GripperAdapter(GripperConfig("joint_trajectory", 0.0, 1.0, 0.0, 1.0,
                                        joint_names=("finger",), trajectory_duration=0.2))
    msg = traj.command(1.0)
    assert isinstance(msg, JointTrajectory) and msg.joint_names == ["finger"]
    assert msg.points[0].positions.tolist() == [1.0]
    none = GripperAdapter(GripperConfig("none"))
    assert none.msg_type is None and none.command(1.0) is None
    with pytest.raises(AdapterConfigError, match="gripper_joint_names"):
        GripperConfig("joint_trajectory")


# ------------------------------------------------------------------------- in the real node

JOINTS6 = ["j1", "j2", "j3", "j4", "j5", "j6"]
MEASURED = [0.5, -0.5, 1.0, -1.0, 0.25, 0.0]


@pytest.mark.ros
@pytest.mark.parametrize("arm_adapter, gripper_adapter", [
    ("joint_trajectory", "joint_trajectory"),
    ("float64_array", "float64_array"),
])
def test_joint_adapters_in_the_policy_node(spawn, ros_env, tmp_path, arm_adapter,
                                           gripper_adapter):
    """The node publishes the adapter's message type with the fields a controller needs:
    joint targets = joint_states + the filtered per-step delta the PolicyStep shows."""
    from policy_node_support import (
        SENSOR,
        Probe,
        camera_args,
        make_checkpoint,
        messages,
        policy_node_args,
        with_fastdds_profile,
    )
    from sensor_msgs.msg import JointState
    from std_srvs.srv import SetBool

    from qt_ros.control.policy_config import DEFAULT_LOWER, DEFAULT_MAX_CHANGE, DEFAULT_UPPER
    from qt_ros.control.safety import SafetyFilter, SafetyLimits
    from qt_ros.msg import PolicyStep

    from conftest import wait_for

    env = with_fastdds_profile(ros_env)
    probe = Probe(int(env["ROS_DOMAIN_ID"]))
    try:
        msg_type = {"joint_trajectory": JointTrajectory, "float64_array": Float64MultiArray}
        arm = probe.collect(msg_type[arm_adapter], "arm_command")
        gripper = probe.collect(msg_type[gripper_adapter], "gripper_command")
        steps = probe.collect(PolicyStep, "policy_step")
        joints = probe.publisher(JointState, "joint_states", SENSOR)
        probe.node.create_timer(0.02, lambda: joints.publish(
            JointState(name=JOINTS6, position=MEASURED)))
        probe.instruction("open the drawer")
        spawn(camera_args(30), env=env, name="camera")
        policy = spawn(policy_node_args(
            make_checkpoint(tmp_path / "ckpt"), arm_adapter=arm_adapter,
            gripper_adapter=gripper_adapter, joint_names=JOINTS6,
            gripper_joint_names=["finger_left", "finger_right"], gripper_open_position=0.04,
            gripper_closed_position=0.0, trajectory_duration=0.2), env=env, name="policy")
        wait_for(lambda: probe.matched("arm_command", "gripper_command", "policy_step")
                 or not policy.alive(), 60, what="the policy node's publishers")
        assert probe.call(SetBool, "/policy/enable", SetBool.Request(data=True)).success
        wait_for(lambda: len(steps) >= 5 or not policy.alive(), 30, what="policy steps")
        assert policy.alive(), policy.output()
        time.sleep(0.3)
        cmds, grips, recs = messages(arm), messages(gripper), messages(steps)
        assert len(cmds) >= 5 and len(grips) >= 5
        replay = SafetyFilter(SafetyLimits.create(
            ["x", "y", "z", "roll", "pitch", "yaw", "gripper"], DEFAULT_LOWER, DEFAULT_UPPER,
            DEFAULT_MAX_CHANGE))
        replay.reset([0.0] * 6 + [np.nan])
        for cmd, grip, rec in zip(cmds, grips, recs[:min(len(cmds), len(grips))], strict=False):
            expected = replay.apply(np.asarray(rec.action)[:7]).values
            target = np.asarray(MEASURED) + expected[:6]
            finger = 0.04 * (1 - expected[6])
            if arm_adapter == "joint_trajectory":
                assert cmd.joint_names == JOINTS6 and len(cmd.points) == 1
                np.testing.assert_allclose(cmd.points[0].positions, target, atol=1e-12)
                assert cmd.points[0].time_from_start.nanosec == 2 * 10**8
                assert grip.joint_names == ["finger_left", "finger_right"]
                np.testing.assert_allclose(grip.points[0].positions, [finger] * 2, atol=1e-12)
            else:
                np.testing.assert_allclose(cmd.data, target, atol=1e-12)
                np.testing.assert_allclose(grip.data, [finger] * 2, atol=1e-12)
    finally:
        probe.close()
