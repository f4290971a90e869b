"""The policy node's outputs as ROS messages: what :class:`qt_ros.control.control_loop.ControlLoop`
decides (commands, holds, steps, the end of an episode, log lines) becomes arm and gripper commands
(through :mod:`qt_ros.nodes.adapters`), ``PolicyStep`` messages, a call of the recorder's
``end_episode`` service and log lines of the node.

Arm commands are stamped with the node's clock when they are sent (MoveIt Servo drops a twist
whose stamp is older than its ``incoming_command_timeout``), except in lockstep: there they
carry the stamp of the frame acted on last, which tells the simulator which tick they answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node

from qt_ros.control.control_loop import StepRecord
from qt_ros.control.policy_config import ActionLayout, PolicyConfig
from qt_ros.msg import PolicyStep
from qt_ros.nodes.adapters import ArmAdapter, ArmConfig, GripperAdapter, GripperConfig
from qt_ros.nodes.qos import COMMAND_QOS, POLICY_STEP_QOS
from qt_ros.srv import EndEpisode


class RosOutput:
    """The control loop's outputs as ROS messages: publishers, the end-episode client, the log."""

    def __init__(self, node: Node, config: PolicyConfig, layout: ActionLayout,
                 frame_header: Callable[[], Any] | None = None):
        """``frame_header()``: the header of the frame acted on last (lockstep stamps)."""
        self._node, self._log = node, node.get_logger()
        self._frame_header = frame_header if config.lockstep else None
        period = config.period
        self.arm = ArmAdapter(ArmConfig(
            adapter=config.arm_adapter, action=config.arm_action, num_dims=layout.num_arm,
            control_period=period, frame_id=config.frame_id, joint_names=config.joint_names,
            float64_array_interface=config.float64_array_interface,
            trajectory_duration=config.trajectory_duration))
        low, high = layout.gripper_range or (0.0, 1.0)
        self.gripper = GripperAdapter(GripperConfig(
            adapter=config.gripper_adapter if layout.gripper_range is not None else "none",
            value_low=low, value_high=high, open_position=config.gripper_open_position,
            closed_position=config.gripper_closed_position,
            joint_names=config.gripper_joint_names,
            trajectory_duration=config.trajectory_duration or period))
        self.step_pub = node.create_publisher(PolicyStep, "policy_step", POLICY_STEP_QOS)
        self.arm_pub = node.create_publisher(self.arm.msg_type, "arm_command", COMMAND_QOS)
        self.gripper_pub = (None if self.gripper.msg_type is None else node.create_publisher(
            self.gripper.msg_type, "gripper_command", COMMAND_QOS))
        self.end_client = node.create_client(EndEpisode, "recorder/end_episode")

    def command(self, arm: np.ndarray, gripper: float | None, joints: np.ndarray | None) -> None:
        self.arm_pub.publish(self.arm.command(arm, self._stamp(), joints))
        if gripper is not None and self.gripper_pub is not None:
            self.gripper_pub.publish(self.gripper.command(gripper))

    def hold(self, joints: np.ndarray | None) -> None:
        arm_msg = self.arm.hold(self._stamp(), joints)
        if arm_msg is not None:
            self.arm_pub.publish(arm_msg)
        gripper_msg = self.gripper.hold() if self.gripper_pub is not None else None
        if gripper_msg is not None:
            self.gripper_pub.publish(gripper_msg)

    def step(self, record: StepRecord) -> None:
        self.step_pub.publish(PolicyStep(
            header=record.header, episode_id=record.episode_id, instruction=record.instruction,
            action_bins=[int(b) for b in record.bins], action=[float(a) for a in record.action],
            dimension_names=list(record.names), q_values=[float(q) for q in record.q_values],
            terminate=record.terminate, inference_time=float(record.latency),
            model_id=record.model_id))

    def end_episode(self, episode_id: str) -> None:
        if not self.end_client.service_is_ready():
            self.warning(f"the policy terminated but {self.end_client.srv_name} is not "
                         f"available: the episode was not ended (is the recorder running?)")
            return
        future = self.end_client.call_async(EndEpisode.Request(episode_id=episode_id,
                                                               outcome="unknown"))
        future.add_done_callback(self._on_episode_ended)

    def _on_episode_ended(self, future) -> None:
        response = future.result()
        if response is None or not response.success:
            detail = "no response" if response is None else response.message
            self.warning(f"the recorder did not end the episode: {detail}")
        else:
            self.info(f"episode ended by terminate: {response.bag_path}")

    def info(self, text: str) -> None:
        self._log.info(text)

    def warning(self, text: str) -> None:
        self._log.warning(text)

    def wait_for_acks(self, seconds: float) -> None:
        """Wait (briefly) until the controllers got the last commands: the process may exit."""
        for pub in (self.arm_pub, self.gripper_pub):
            if pub is not None:
                pub.wait_for_all_acked(Duration(seconds=seconds))

    def destroy(self) -> None:
        for pub in (self.step_pub, self.arm_pub, self.gripper_pub):
            if pub is not None:
                self._node.destroy_publisher(pub)
        self._node.destroy_client(self.end_client)

    def _stamp(self):
        header = self._frame_header() if self._frame_header is not None else None
        return header.stamp if header is not None else self._node.get_clock().now().to_msg()
