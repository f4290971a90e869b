"""Arm and gripper command adapters: filtered policy values -> the message a controller takes.

Arm (parameter ``arm_adapter``):

- ``twist``: ``geometry_msgs/TwistStamped`` for MoveIt Servo (``delta_twist_cmds``); the arm
  dimensions are (x, y, z) or (x, y, z, roll, pitch, yaw).
- ``joint_trajectory``: ``trajectory_msgs/JointTrajectory`` with one point, for a
  joint_trajectory_controller (positions of ``joint_names``).
- ``float64_array``: ``std_msgs/Float64MultiArray`` for a forward_command_controller, whose
  command interface is ``position`` or ``velocity``.

What the policy's arm values mean (parameter ``arm_action``):

- ``delta`` (the default tokenizer: per-step end-effector or joint changes): a twist or a
  velocity is ``delta / control period``; a position target is the measured joint position
  (``joint_states``) plus the delta.
- ``absolute``: the values are the command itself (a twist in m/s and rad/s, joint velocities, or
  joint position targets).

A hold command stops the arm: a zero twist or zero velocities; for position interfaces the
measured joint positions (or, before any joint state, the last target; nothing if none was sent).
The gripper hold re-sends the last gripper command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import TwistStamped
from std_msgs.msg import Float64, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from qt_ros.control.policy_config import (  # the node's parameter choices, declared once
    ARM_ACTIONS,
    ARM_ADAPTERS,
    FLOAT64_ARRAY_INTERFACES,
    GRIPPER_ADAPTERS,
)


class AdapterConfigError(ValueError):
    """An adapter configuration that cannot work: says which parameter and what to set."""


def duration(seconds: float) -> Duration:
    nanoseconds = int(round(seconds * 1e9))
    return Duration(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def twist_stamped(values: Sequence[float], frame_id: str, stamp) -> TwistStamped:
    """(vx, vy, vz) or (vx, vy, vz, wx, wy, wz) -> TwistStamped in ``frame_id``."""
    v = [float(x) for x in values] + [0.0] * (6 - len(values))
    msg = TwistStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = v[0], v[1], v[2]
    msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = v[3], v[4], v[5]
    return msg


def joint_trajectory(joint_names: Sequence[str], positions: Sequence[float],
                     time_from_start: float) -> JointTrajectory:
    """One-point trajectory; a zero header stamp means "start now" to the controller."""
    msg = JointTrajectory()
    msg.joint_names = list(joint_names)
    point = JointTrajectoryPoint()
    point.positions = [float(p) for p in positions]
    point.time_from_start = duration(time_from_start)
    msg.points = [point]
    return msg


def float64_array(values: Sequence[float]) -> Float64MultiArray:
    return Float64MultiArray(data=[float(v) for v in values])


@dataclass(frozen=True)
class ArmConfig:
    """Arm adapter settings (node parameters of the same names)."""

    adapter: str = "twist"
    action: str = "delta"
    num_dims: int = 6
    control_period: float = 0.1
    frame_id: str = "base_link"
    joint_names: tuple[str, ...] = ()
    float64_array_interface: str = "position"
    trajectory_duration: float = 0.0  # 0: one control period

    def __post_init__(self) -> None:
        if self.adapter not in ARM_ADAPTERS:
            raise AdapterConfigError(f"arm_adapter '{self.adapter}' is not one of "
                                     f"{', '.join(ARM_ADAPTERS)}")
        if self.action not in ARM_ACTIONS:
            raise AdapterConfigError(f"arm_action '{self.action}' is not one of "
                                     f"{', '.join(ARM_ACTIONS)}")
        if self.float64_array_interface not in FLOAT64_ARRAY_INTERFACES:
            raise AdapterConfigError(
                f"float64_array_interface '{self.float64_array_interface}' is not one of "
                f"{', '.join(FLOAT64_ARRAY_INTERFACES)}")
        if self.adapter == "twist" and self.num_dims not in (3, 6):
            raise AdapterConfigError(
                f"arm_adapter 'twist' needs 3 (x y z) or 6 (x y z roll pitch yaw) arm_dimensions, "
                f"got {self.num_dims}")
        if self.adapter != "twist" and len(self.joint_names) != self.num_dims:
            raise AdapterConfigError(
                f"arm_adapter '{self.adapter}' needs one joint in joint_names per arm dimension: "
                f"{self.num_dims} arm_dimensions but joint_names = {list(self.joint_names)}")
        if self.control_period <= 0 or self.trajectory_duration < 0:
            raise AdapterConfigError("control period must be > 0 and trajectory_duration >= 0")

    @property
    def velocity(self) -> bool:
        """True when the command is a velocity (hold = zero), False for position targets."""
        return self.adapter == "twist" or (
            self.adapter == "float64_array" and self.float64_array_interface == "velocity")


class ArmAdapter:
    """Builds the arm command (and the hold command) from the filtered arm values."""

    def __init__(self, config: ArmConfig):
        self.config = config
        self.msg_type = {"twist": TwistStamped, "joint_trajectory": JointTrajectory,
                         "float64_array": Float64MultiArray}[config.adapter]
        self._last_target: np.ndarray | None = None

    @property
    def needs_joint_positions(self) -> bool:
        """Position targets built from deltas need the measured joint positions."""
        return not self.config.velocity and self.config.action == "delta"

    def rest(self, measured: np.ndarray | None) -> np.ndarray:
        """The arm values that mean "stay still" (the safety filter's start after a hold).

        Zero for deltas and velocities; the measured position for absolute position targets
        (NaN while unknown: then the first target is not rate limited).
        """
        if self.config.action == "delta" or self.config.velocity:
            return np.zeros(self.config.num_dims)
        if measured is None:
            return np.full(self.config.num_dims, np.nan)
        return np.asarray(measured, dtype=np.float64)

    def command(self, values: np.ndarray, stamp, measured: np.ndarray | None = None):
        """Message for the arm values ``values`` (policy units, already filtered)."""
        cfg = self.config
        v = np.asarray(values, dtype=np.float64)
        if cfg.velocity:
            velocity = v / cfg.control_period if cfg.action == "delta" else v
            if cfg.adapter == "twist":
                return twist_stamped(velocity, cfg.frame_id, stamp)
            return float64_array(velocity)
        if cfg.action == "delta":
            if measured is None:
                raise ValueError("no joint positions measured yet (joint_states)")
            target = np.asarray(measured, dtype=np.float64) + v
        else:
            target = v
        self._last_target = target
        return self._position_message(target)

    def hold(self, stamp, measured: np.ndarray | None = None):
        """Message that stops the arm, or None when there is nothing to hold."""
        cfg = self.config
        if cfg.velocity:
            zeros = np.zeros(cfg.num_dims)
            if cfg.adapter == "twist":
                return twist_stamped(zeros, cfg.frame_id, stamp)
            return float64_array(zeros)
        target = measured if measured is not None else self._last_target
        if target is None:
            return None
        self._last_target = np.asarray(target, dtype=np.float64)
        return self._position_message(self._last_target)

    def _position_message(self, target: np.ndarray):
        cfg = self.config
        if cfg.adapter == "joint_trajectory":
            return joint_trajectory(cfg.joint_names, target,
                                    cfg.trajectory_duration or cfg.control_period)
        return float64_array(target)


@dataclass(frozen=True)
class GripperConfig:
    """Gripper adapter settings: the policy's gripper range maps linearly onto the positions.

    ``value_low`` / ``value_high`` are the policy's gripper bounds (the tokenizer's), commanded as
    ``open_position`` / ``closed_position``.
    """

    adapter: str = "float64"
    value_low: float = 0.0
    value_high: float = 1.0
    open_position: float = 0.0
    closed_position: float = 1.0
    joint_names: tuple[str, ...] = ()
    trajectory_duration: float = 0.1

    def __post_init__(self) -> None:
        if self.adapter not in GRIPPER_ADAPTERS:
            raise AdapterConfigError(f"gripper_adapter '{self.adapter}' is not one of "
                                     f"{', '.join(GRIPPER_ADAPTERS)}")
        if self.adapter == "joint_trajectory" and not self.joint_names:
            raise AdapterConfigError(
                "gripper_adapter 'joint_trajectory' needs gripper_joint_names")
        if not self.value_high > self.value_low:
            raise AdapterConfigError(f"gripper value range [{self.value_low}, {self.value_high}] "
                                     f"is empty")


class GripperAdapter:
    """Builds the gripper command; its hold re-sends the last position."""

    def __init__(self, config: GripperConfig):
        self.config = config
        self.msg_type = {"float64": Float64, "float64_array": Float64MultiArray,
                         "joint_trajectory": JointTrajectory, "none": None}[config.adapter]
        self._last: float | None = None

    def position(self, value: float) -> float:
        cfg = self.config
        fraction = (float(value) - cfg.value_low) / (cfg.value_high - cfg.value_low)
        return cfg.open_position + fraction * (cfg.closed_position - cfg.open_position)

    def command(self, value: float):
        self._last = self.position(value)
        return self._message(self._last)

    def hold(self):
        return None if self._last is None else self._message(self._last)

    def _message(self, position: float):
        cfg = self.config
        if cfg.adapter == "none":
            return None
        if cfg.adapter == "float64":
            return Float64(data=position)
        count = max(1, len(cfg.joint_names))
        if cfg.adapter == "float64_array":
            return float64_array([position] * count)
        return joint_trajectory(cfg.joint_names, [position] * count, cfg.trajectory_duration)
