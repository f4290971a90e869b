"""Scripted demonstrations for the simulated robot, sent as a teleoperator would send them.

A node named ``demonstrator`` around :class:`qt_ros.sim.demonstrator.ScriptedDemonstrator`.
It reads the simulator's privileged state (``sim_robot/state``, std_msgs/Float64MultiArray,
see :data:`qt_ros.sim.simulator.STATE_NAMES`) and answers every state with the commands the policy
node would send: ``arm_command`` (geometry_msgs/TwistStamped, the delta divided by the control
period, stamped when it answers) and ``gripper_command`` (std_msgs/Float64, 0 open .. 1 closed),
in that order. The recorder records these like any teleoperated demonstration (``qt-ros convert
--mapping``). It answers each state once: a state sent again unchanged (a simulator in lockstep
re-sends the tick it waits for) is not answered twice, so with a lockstep simulator an episode
is the in-process ``qt_ros.sim.simulator.run_episode`` of the same seeds, step for step.

Disabled at start: ``~/enable`` (std_srvs/SetBool) true starts an episode (the demonstrator
draws this episode's noise and mistake from ``seed`` + the number of episodes so far), false
stops it with a hold command. When the script decides the episode is over it sends a hold
command (zero twist), disables itself and asks the recorder to end the episode
(``recorder/end_episode``, outcome ``unknown``: the simulator's success detector labels it).

Run: ``python -m qt_ros.nodes.demonstrator_node --ros-args -p task:=lift -p noise:=0.002``;
parameters: :class:`qt_ros.sim.node_configs.DemonstratorNodeConfig`, set in ``config/sim.yaml``.
"""

from __future__ import annotations

import sys

import numpy as np
from geometry_msgs.msg import TwistStamped
from rclpy.node import Node
from std_msgs.msg import Float64, Float64MultiArray
from std_srvs.srv import SetBool

from qt_ros.msg import EpisodeEvent
from qt_ros.nodes.node_parameters import declare_config
from qt_ros.nodes.qos import COMMAND_QOS, EPISODE_EVENTS_QOS, LATEST_STATE_QOS
from qt_ros.nodes.runner import run_node
from qt_ros.sim.demonstrator import ScriptedDemonstrator
from qt_ros.sim.node_configs import DemonstratorNodeConfig
from qt_ros.sim.simulator import STATE_NAMES, SimState
from qt_ros.srv import EndEpisode

NODE_NAME = "demonstrator"
TIME = STATE_NAMES.index("time")


class DemonstratorNode(Node):
    """The ``demonstrator`` node (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.config = declare_config(self, DemonstratorNodeConfig)
        self.rate = self.config.control_rate
        self.script = ScriptedDemonstrator(self.config.sim_config(),
                                           self.config.demonstrator_config())
        self.seed = self.config.seed
        self.episodes = 0
        self.frame_id = self.config.frame_id
        self.end_on_terminate = self.config.end_episode_on_terminate
        self._gripper = 0.0
        self._episode_id = ""
        self._latest: tuple[float, ...] | None = None  # the state received last
        self._answered: tuple[float, ...] | None = None  # the state answered last
        self.enabled = False
        self.arm_pub = self.create_publisher(TwistStamped, "arm_command", COMMAND_QOS)
        self.gripper_pub = self.create_publisher(Float64, "gripper_command", COMMAND_QOS)
        self.create_subscription(Float64MultiArray, "sim_robot/state", self._on_state,
                                 LATEST_STATE_QOS)
        self.create_subscription(EpisodeEvent, "episode_events", self._on_event,
                                 EPISODE_EVENTS_QOS)
        self.create_service(SetBool, "~/enable", self._on_enable)
        self._end_client = self.create_client(EndEpisode, "recorder/end_episode")
        if self.config.start_enabled:
            self._start()
        self.get_logger().info(
            f"task '{self.script.sim_config.task}', noise {self.script.config.noise:g} m, "
            f"failure rate {self.script.config.failure_rate:g}; "
            + ("enabled" if self.enabled else "disabled until a call to ~/enable"))

    def _start(self) -> None:
        self.script.reset(self.seed + self.episodes)
        self.episodes += 1
        self._answered = None
        self.enabled = True
        mistake = f" (scripted mistake: {self.script.mistake})" if self.script.mistake else ""
        self.get_logger().info(f"demonstration {self.episodes} started{mistake}")
        # A state at simulated time 0 is an episode's first tick, just reset: a lockstep
        # simulator waits for its answer, so answer now rather than at its next re-send.
        latest = self._latest
        if latest is not None and len(latest) == len(STATE_NAMES) and latest[TIME] == 0.0:
            self._answer(self._latest)

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response):
        if request.data and not self.enabled:
            self._start()
        elif not request.data and self.enabled:
            self.enabled = False
            self._hold()
            self.get_logger().info("disabled by ~/enable")
        response.success = True
        response.message = "enabled" if self.enabled else "disabled"
        return response

    def _on_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.STARTED:
            self._episode_id = msg.episode_id
        elif msg.event == EpisodeEvent.ENDED and msg.episode_id == self._episode_id:
            self._episode_id = ""

    def _on_state(self, msg: Float64MultiArray) -> None:
        self._latest = tuple(msg.data)
        if self.enabled:
            self._answer(self._latest)

    def _answer(self, data: tuple[float, ...]) -> None:
        if data == self._answered:
            return
        self._answered = data
        try:
            state = SimState.from_vector(data)
        except ValueError as exc:
            self.get_logger().error(f"bad message on sim_robot/state: {exc}")
            return
        action = self.script.act(state)
        if action[7] > 0.5:
            self._hold()
            self.enabled = False
            self.get_logger().info(f"demonstration {self.episodes} done after "
                                   f"{state.time:.1f} s of simulated time")
            if self.end_on_terminate:
                self._end_episode()
            return
        self._publish(action[:3] * self.rate, float(action[6]))

    def _publish(self, velocity: np.ndarray, gripper: float) -> None:
        twist = TwistStamped()
        twist.header.stamp = self.get_clock().now().to_msg()
        twist.header.frame_id = self.frame_id
        twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z = \
            (float(v) for v in velocity)
        self.arm_pub.publish(twist)
        self._gripper = gripper
        self.gripper_pub.publish(Float64(data=gripper))

    def _hold(self) -> None:
        self._publish(np.zeros(3), self._gripper)

    def _end_episode(self) -> None:
        if not self._end_client.service_is_ready():
            self.get_logger().warning(f"{self._end_client.srv_name} is not available: the "
                                      f"episode was not ended (is the recorder running?)")
            return
        future = self._end_client.call_async(
            EndEpisode.Request(episode_id=self._episode_id, outcome="unknown"))
        future.add_done_callback(self._on_ended)

    def _on_ended(self, future) -> None:
        response = future.result()
        if response is None or not response.success:
            detail = "no response" if response is None else response.message
            self.get_logger().warning(f"the recorder did not end the episode: {detail}")


def _shutdown(node: DemonstratorNode) -> None:
    if node.enabled:
        node._hold()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run qt_ros demonstrator_node``."""
    return run_node(DemonstratorNode, name="demonstrator_node", teardown=_shutdown, args=args)


if __name__ == "__main__":
    sys.exit(main())
