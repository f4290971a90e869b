"""The simulated robot as a ROS 2 node: arm + gripper commands in, camera and state out.

A node named ``sim_robot`` around :class:`qt_ros.sim.simulator.TabletopSim` (MuJoCo, offscreen). A
steady timer steps the physics one control period per tick, with the latest commands:

- ``arm_command`` (geometry_msgs/TwistStamped, m/s; the policy node's ``twist`` adapter): the
  linear part moves the end-effector by ``velocity * period`` per tick (clipped to the
  tokenizer's 0.05 m per step); the angular part is ignored (the gripper does not rotate).
  A twist older than ``command_timeout`` counts as zero, like a servo's watchdog.
- ``gripper_command`` (std_msgs/Float64, 0 open .. 1 closed; the ``float64`` gripper adapter),
  held until the next one.

**Lockstep** (parameter ``lockstep``, on in ``config/sim.yaml`` and the demo): the simulation
advances one control period per decision instead of per timer tick. After publishing tick k it
waits for the decision answering it (an arm command stamped at or after tick k's stamp, plus a
gripper command: :mod:`qt_ros.sim.lockstep`), applies it for exactly one period and publishes
tick k+1, no faster than ``control_rate``. Without a decision it does not advance: it sends tick
k again (same stamp) every ``lockstep_resend`` seconds and when the recorder starts an episode,
so a commander that missed it (or was disabled) can answer. A reset publishes the new scene's
tick 0 at once. An episode is then a function of the seed and the commander only, whatever the
machine's load (docs/design.md 2.6).

Every tick publishes ``joint_states`` (sensor_msgs/JointState: ee_x ee_y ee_z finger_left
finger_right, metres), ``task_success`` (std_msgs/Bool, the task's success detector) and
``~/state`` (std_msgs/Float64MultiArray: the privileged state, in the order of
``qt_ros.sim.simulator.STATE_NAMES``, for the scripted demonstrator). ``image`` (sensor_msgs/Image
rgb8) is rendered at ``camera_rate`` (by default with every tick: image and joint states then
carry the same header stamp). The task's instruction goes out once on ``instruction``
(std_msgs/String, reliable + transient local) unless ``publish_instruction`` is false.

``~/reset`` (std_srvs/Trigger) starts a new episode: block, goal and gripper drawn from seed
``seed + number of resets so far``, commands forgotten, gripper open. With ``label_episodes``
(default), an episode the recorder ends without an outcome (``episode_events`` ENDED, outcome
``unknown``: the policy's or demonstrator's terminate, or an ``end_episode`` call) is labelled
``success`` or ``failure`` by the success detector at that moment, through
``recorder/label_episode``.

Run: ``ros2 run qt_ros sim_robot_node`` or ``python -m qt_ros.nodes.sim_robot_node --ros-args
-p task:=lift``; parameters: :class:`qt_ros.sim.node_configs.SimRobotNodeConfig`, set in
``config/sim.yaml``.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
from geometry_msgs.msg import TwistStamped
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, MultiArrayDimension, String
from std_srvs.srv import Trigger

from qt_ros.data.images import numpy_to_image
from qt_ros.msg import EpisodeEvent
from qt_ros.nodes.node_parameters import declare_config
from qt_ros.nodes.qos import (
    COMMAND_QOS,
    EPISODE_EVENTS_QOS,
    INSTRUCTION_QOS,
    RELIABLE_QOS,
    SENSOR_QOS,
)
from qt_ros.nodes.runner import run_node
from qt_ros.sim.lockstep import Decision
from qt_ros.sim.node_configs import SimRobotNodeConfig
from qt_ros.sim.simulator import JOINT_NAMES, STATE_NAMES, SimRenderError, TabletopSim
from qt_ros.srv import LabelEpisode

NODE_NAME = "sim_robot"


class SimRobotNode(Node):
    """The ``sim_robot`` node (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.config = declare_config(self, SimRobotNodeConfig)
        rate = self.config.control_rate
        camera_rate = self.config.camera_rate or rate
        self.period = 1.0 / rate
        self.sim = TabletopSim(self.config.sim_config())
        self.seed = self.config.seed
        self.resets = 0
        self.command_timeout = self.config.command_timeout
        self.frame_id = self.config.frame_id
        self.lockstep = self.config.lockstep
        self.decision = Decision(with_gripper=self.config.lockstep_gripper)
        self._twist = np.zeros(3)
        self._twist_time = -math.inf
        self._gripper = 0.0
        self._tick: list = []  # (publisher, message) of the latest tick, to send it again
        self._sent = -math.inf  # monotonic time the latest tick was (re)sent
        self._due = False  # lockstep: the timer allows the next step
        self.ticks = 0
        self.render_time = 0.0
        self._new_episode()
        self.sim.render()  # fails here, with the reason, if offscreen rendering does not work

        self.image_pub = self.create_publisher(Image, "image", SENSOR_QOS)
        self.joint_pub = self.create_publisher(JointState, "joint_states", SENSOR_QOS)
        self.success_pub = self.create_publisher(Bool, "task_success", RELIABLE_QOS)
        self.state_pub = self.create_publisher(Float64MultiArray, "~/state", RELIABLE_QOS)
        if self.config.publish_instruction:
            self.instruction_pub = self.create_publisher(String, "instruction", INSTRUCTION_QOS)
            self.instruction_pub.publish(String(data=self.sim.config.instruction))
        self.create_subscription(TwistStamped, "arm_command", self._on_twist, COMMAND_QOS)
        self.create_subscription(Float64, "gripper_command", self._on_gripper, COMMAND_QOS)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self._label_client = None
        if self.config.label_episodes:
            self._label_client = self.create_client(LabelEpisode, "recorder/label_episode")
        if self.config.label_episodes or self.lockstep:
            self.create_subscription(EpisodeEvent, "episode_events", self._on_event,
                                     EPISODE_EVENTS_QOS)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(self.period, self._on_tick, clock=steady)
        self._same_tick_camera = camera_rate == rate
        if not self._same_tick_camera:
            self.create_timer(1.0 / camera_rate, self._publish_image, clock=steady)
        if self.lockstep:
            self._publish_tick(self.sim.state())
        self.get_logger().info(
            f"task '{self.sim.config.task}' ('{self.sim.config.instruction}'), control at "
            f"{rate:g} Hz{' in lockstep' if self.lockstep else ''}, camera "
            f"{self.sim.config.image_width}x{self.sim.config.image_height} at {camera_rate:g} "
            f"Hz, episode seed {self.sim.episode_seed}")

    # ---------------------------------------------------------------- commands

    def _on_twist(self, msg: TwistStamped) -> None:
        v = msg.twist.linear
        velocity = np.array([v.x, v.y, v.z], dtype=np.float64)
        if not np.isfinite(velocity).all():
            self.get_logger().warning("ignored a twist with non-finite values")
            return
        self._twist = velocity
        self._twist_time = time.monotonic()
        if self.lockstep:
            stamp = msg.header.stamp
            self.decision.on_arm(stamp.sec * 1_000_000_000 + stamp.nanosec, velocity)
            self._advance_if_decided()

    def _on_gripper(self, msg: Float64) -> None:
        if not math.isfinite(msg.data):
            return
        value = float(np.clip(msg.data, 0.0, 1.0))
        if not self.lockstep:
            self._gripper = value
        elif self.decision.on_gripper(value):
            self._advance_if_decided()

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        self._new_episode()
        if self.lockstep:
            self._publish_tick(self.sim.state())
        response.success = True
        response.message = (f"episode {self.resets - 1}, seed {self.sim.episode_seed}: "
                            f"'{self.sim.config.instruction}'")
        self.get_logger().info(f"reset: {response.message}")
        return response

    def _new_episode(self) -> None:
        self.sim.reset(self.seed + self.resets)
        self.resets += 1
        self._twist = np.zeros(3)
        self._twist_time = -math.inf
        self._gripper = 0.0

    # ---------------------------------------------------------------- simulation

    def _on_tick(self) -> None:
        if not self.lockstep:  # the latest commands, whenever they came
            fresh = time.monotonic() - self._twist_time <= self.command_timeout
            self._step(self._twist if fresh else np.zeros(3), self._gripper)
            return
        self._due = True
        if (not self._advance_if_decided() and not self.decision.begun
                and time.monotonic() - self._sent >= self.config.lockstep_resend):
            self._send_tick()

    def _advance_if_decided(self) -> bool:
        """Lockstep: step with the decision once it is complete and the timer allows."""
        if not (self._due and self.decision.complete):
            return False
        self._due = False
        if self.decision.gripper is not None:
            self._gripper = self.decision.gripper
        self._step(self.decision.velocity, self._gripper)
        return True

    def _step(self, velocity: np.ndarray, gripper: float) -> None:
        state = self.sim.step([*(velocity * self.period), 0.0, 0.0, 0.0, gripper])
        self.ticks += 1
        self._publish_tick(state)

    def _publish_tick(self, state) -> None:
        """Publish a tick (image with it by default) and, in lockstep, wait for its answer."""
        stamp = self.get_clock().now().to_msg()
        joints = JointState(name=list(JOINT_NAMES),
                            position=[float(q) for q in self.sim.joint_positions()],
                            velocity=[float(v) for v in self.sim.joint_velocities()])
        joints.header.stamp = stamp
        joints.header.frame_id = "base_link"
        vector = Float64MultiArray(data=[float(v) for v in state.to_vector()])
        vector.layout.dim = [MultiArrayDimension(label=",".join(STATE_NAMES),
                                                 size=len(STATE_NAMES), stride=len(STATE_NAMES))]
        self._tick = [(self.joint_pub, joints), (self.state_pub, vector),
                      (self.success_pub, Bool(data=state.success))]
        if self._same_tick_camera:
            self._tick.insert(0, (self.image_pub, self._image(stamp)))
        if self.lockstep:
            self.decision.open(stamp.sec * 1_000_000_000 + stamp.nanosec)
        self._send_tick()

    def _send_tick(self) -> None:
        for publisher, msg in self._tick:
            publisher.publish(msg)
        self._sent = time.monotonic()

    def _image(self, stamp) -> Image:
        start = time.perf_counter()
        frame = self.sim.render()
        self.render_time += time.perf_counter() - start
        msg = numpy_to_image(frame, "rgb8", Image)
        msg.header.stamp = stamp
        msg.header.frame_id = self.frame_id
        return msg

    def _publish_image(self) -> None:  # the camera's own timer (camera_rate != control_rate)
        self.image_pub.publish(self._image(self.get_clock().now().to_msg()))

    # ---------------------------------------------------------------- labels

    def _on_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.STARTED and self.lockstep:
            if self._tick and not self.decision.begun:
                self._send_tick()  # the recording starts with the tick being waited for
            return
        if (self._label_client is None or msg.event != EpisodeEvent.ENDED
                or msg.outcome != EpisodeEvent.OUTCOME_UNKNOWN):
            return
        outcome = "success" if self.sim.success() else "failure"
        if not self._label_client.service_is_ready():
            self.get_logger().warning(
                f"episode {msg.episode_id} ended unlabelled but {self._label_client.srv_name} "
                f"is not available: not labelled {outcome}")
            return
        future = self._label_client.call_async(
            LabelEpisode.Request(episode_id=msg.episode_id, outcome=outcome))
        future.add_done_callback(lambda f, e=msg.episode_id, o=outcome: self._on_labelled(f, e, o))

    def _on_labelled(self, future, episode_id: str, outcome: str) -> None:
        response = future.result()
        if response is None or not response.success:
            detail = "no response" if response is None else response.message
            self.get_logger().warning(f"could not label episode {episode_id} {outcome}: "
                                      f"{detail}")
        else:
            self.get_logger().info(f"episode {episode_id}: {outcome} (success detector)")

    def close(self) -> None:
        if self.ticks:
            late = (f"; {self.decision.late} late commands not applied (lockstep)"
                    if self.decision.late else "")
            self.get_logger().info(f"{self.ticks} ticks; render "
                                   f"{1e3 * self.render_time / self.ticks:.1f} ms per tick"
                                   + late)
        self.sim.close()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run qt_ros sim_robot_node``."""
    return run_node(SimRobotNode, name="sim_robot_node", teardown=SimRobotNode.close,
                    errors=(ValueError, SimRenderError), args=args)


if __name__ == "__main__":
    sys.exit(main())
