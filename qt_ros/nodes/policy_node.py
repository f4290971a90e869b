"""On-robot Q-Transformer policy: camera + instruction in, safe arm and gripper commands out.

A lifecycle node named ``policy``: *configure* loads the checkpoint and warms the model up,
*activate* starts the control timer, *deactivate* sends a hold command and stops, *cleanup*
releases the model. With ``autostart`` (the default) it configures and activates itself, so
``ros2 run`` / ``ros2 launch`` need no lifecycle manager. Commands wait for ``~/enable``
(std_srvs/SetBool) unless ``start_enabled``.

The node only converts: messages -> plain values -> :mod:`qt_ros.control.control_loop` (timing,
frame choice, staleness, safety, holds, terminate, statistics) -> :mod:`qt_ros.nodes.
policy_output` (arm and gripper commands, ``PolicyStep``, the recorder's ``end_episode``).
Parameters: :class:`qt_ros.control.policy_config.PolicyConfig` (see ``config/policy.yaml``).

Run: ``ros2 run qt_ros policy_node --ros-args -p checkpoint:=/path/to/checkpoint``
or ``python -m qt_ros.nodes.policy_node --ros-args ...``.
"""

from __future__ import annotations

import sys
import time

import cv2
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool

from qt_ros.common.settings import from_parameters, parameter_table
from qt_ros.control.control_loop import ControlLoop
from qt_ros.control.policy_config import ConfigError, PolicyConfig, load_policy
from qt_ros.data.images import ImageConversionError, to_rgb8
from qt_ros.msg import EpisodeEvent
from qt_ros.nodes.adapters import AdapterConfigError
from qt_ros.nodes.policy_output import RosOutput
from qt_ros.nodes.qos import EPISODE_EVENTS_QOS, INSTRUCTION_QOS, LATEST_SENSOR_QOS
from qt_ros.nodes.runner import run_node

NODE_NAME = "policy"
SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE
PARAMETERS = parameter_table(PolicyConfig)  # name -> (default, description)


class PolicyNode(LifecycleNode):
    """The ``policy`` lifecycle node. ``loop``: the :class:`ControlLoop` while configured (None
    otherwise); its ``stats`` and ``policy`` are what the benchmark reads."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        for name, (default, description) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=description))
        self.loop: ControlLoop | None = None
        # ~/enable before configure (and across cleanup) sets what the next loop starts with.
        self._enabled = bool(self.get_parameter("start_enabled").value)
        self._output: RosOutput | None = None
        self._subs: list = []  # of the configured node
        self._control_timers: list = []
        self._wait_timer = None
        self._image_topic = ""
        self.create_service(SetBool, "~/enable", self._on_enable)

    # ---------------------------------------------------------------- lifecycle

    def autostart(self) -> bool:
        """Configure and activate when the ``autostart`` parameter says so."""
        if not self.get_parameter("autostart").value:
            self.get_logger().info("autostart is false: waiting for lifecycle transitions")
            return False
        if self.trigger_configure() != SUCCESS:
            self.get_logger().error(
                "policy node not configured (see the error above); fix the parameter and run "
                "`ros2 lifecycle set /policy configure`, then `... activate`")
            return False
        return self.trigger_activate() == SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = from_parameters(PolicyConfig, {n: self.get_parameter(n).value
                                                    for n in PARAMETERS})
            start = time.monotonic()
            policy, layout = load_policy(config)
            self._output = RosOutput(self, config, layout,
                                     frame_header=lambda: self.loop and self.loop.acted_header)
        except (ConfigError, AdapterConfigError) as e:
            return self._configure_failed(str(e))
        except Exception as e:  # noqa: BLE001 - the user must see why, not a silent FAILURE
            return self._configure_failed(f"{type(e).__name__}: {e}")
        self.loop = ControlLoop(config, layout, policy, self._output, enabled=self._enabled)
        self.get_logger().info(
            f"loaded {policy.model_id} from {config.checkpoint} on {config.device} in "
            f"{time.monotonic() - start:.1f} s; action dimensions {' '.join(layout.names)}; "
            f"control at {config.control_rate:g} Hz; arm adapter {config.arm_adapter}")
        self._subscribe(config)
        return SUCCESS

    def _subscribe(self, config: PolicyConfig) -> None:
        image_type, image_topic = ((Image, "image") if config.image_transport == "raw"
                                   else (CompressedImage, "image/compressed"))
        subs = [(image_type, image_topic, self._on_image, LATEST_SENSOR_QOS),
                (String, "instruction", self._on_instruction, INSTRUCTION_QOS),
                (EpisodeEvent, "episode_events", self._on_episode_event, EPISODE_EVENTS_QOS)]
        if config.uses_joint_states:
            subs.append((JointState, "joint_states", self._on_joint_states, LATEST_SENSOR_QOS))
        if config.state_source == "pose":
            subs.append((PoseStamped, "pose", self._on_pose, LATEST_SENSOR_QOS))
        self._subs = [self.create_subscription(*s) for s in subs]
        self._image_topic = self._subs[0].topic_name

    def _configure_failed(self, why: str) -> TransitionCallbackReturn:
        self.get_logger().error(f"configure failed: {why}")
        self._release()
        return FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        wait = max(self.loop.config.max_frame_wait, 1e-3)
        self._wait_timer = self.create_timer(wait, self._on_frame_wait, clock=steady,
                                             autostart=False)
        self._control_timers = [self.create_timer(self.loop.config.period, self._on_tick,
                                                  clock=steady), self._wait_timer]
        self.loop.activate()
        self.get_logger().info("active" + ("" if self.loop.enabled else
                                           ": disabled until a call to ~/enable"))
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.loop.deactivate("deactivated")
        self._stop_timers()
        self.log_stats()
        return SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_safely("shutting down")
        self._release()
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_safely("lifecycle error")
        self._release()
        return SUCCESS

    def stop_safely(self, reason: str) -> None:
        """Send the hold command if moving and stop the timers (Ctrl-C, shutdown, errors);
        wait briefly until the controllers acknowledged the hold: the process may exit next."""
        if self.loop is not None and self.loop.active:
            self.loop.deactivate(reason)
            self._stop_timers()
            self._output.wait_for_acks(0.5)

    def log_stats(self) -> None:
        """Log the loop's step count, holds, missed deadlines and latency percentiles, and the
        malformed frames rejected per reason."""
        if self.loop is None:
            return
        for line in (self.loop.stats.summary(), self.loop.stats.rejections()):
            if line:
                self.get_logger().info(line)

    def _stop_timers(self) -> None:
        for timer in self._control_timers:
            self.destroy_timer(timer)
        self._control_timers, self._wait_timer = [], None

    def _release(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._output is not None:
            self._output.destroy()
        self._output = None
        if self.loop is not None:
            self._enabled = self.loop.enabled  # a terminate disabled it: stays disabled
        self.loop = None

    # ---------------------------------------------------------------- callbacks

    def _on_tick(self) -> None:
        if self.loop.tick():
            self._wait_timer.reset()

    def _on_frame_wait(self) -> None:
        self._wait_timer.cancel()  # one shot per tick
        self.loop.frame_wait()

    def _on_image(self, msg) -> None:
        if not self.loop.active:
            return
        received = time.monotonic()
        stamp = msg.header.stamp
        transport = time.time() - (stamp.sec + stamp.nanosec * 1e-9)
        try:
            rgb = self._rgb(msg)
        except (ImageConversionError, ValueError, cv2.error) as e:
            self.loop.on_bad_frame(str(e), transport, getattr(e, "reason", "invalid"))
            return
        if self.loop.on_frame(rgb, msg.header, received, transport, stamp=_ns(stamp)):
            self._wait_timer.cancel()  # the step ran: no frame wait in this period

    def _rgb(self, msg):
        rgb = to_rgb8(msg, self._image_topic)
        h, w = self.loop.config.image_size
        if (h and rgb.shape[0] != h) or (w and rgb.shape[1] != w):
            raise ImageConversionError(
                f"frame on topic '{self._image_topic}' is {rgb.shape[1]}x{rgb.shape[0]}, "
                f"expected {w or 'any'}x{h or 'any'} (parameters image_width/image_height)",
                "resolution")
        return rgb

    def _on_instruction(self, msg: String) -> None:
        self.loop.on_instruction(msg.data)

    def _on_joint_states(self, msg: JointState) -> None:
        self.loop.on_joint_states(msg.name, msg.position, stamp=_ns(msg.header.stamp))

    def _on_pose(self, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        self.loop.on_pose([p.x, p.y, p.z, q.x, q.y, q.z, q.w], stamp=_ns(msg.header.stamp))

    def _on_episode_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.STARTED:
            self.loop.episode_started(msg.episode_id)
        elif msg.event == EpisodeEvent.ENDED:
            self.loop.episode_ended(msg.episode_id)

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response):
        if self.loop is not None:
            self.loop.set_enabled(request.data)
            enabled, active = self.loop.enabled, self.loop.active
        else:  # not configured yet: the next configure starts the loop with this
            if request.data and not self._enabled:
                self.get_logger().info("enabled")
            self._enabled = enabled = request.data
            active = False
        response.success = True
        response.message = "enabled" if enabled else "disabled"
        if enabled and not active:
            response.message += " (the node is not active: commands start once it is)"
        return response


def _ns(stamp) -> int:
    """A header stamp as integer nanoseconds (exact, for lockstep's stamp matching)."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _shutdown(node: PolicyNode) -> None:
    node.stop_safely("shutting down")
    node.log_stats()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run qt_ros policy_node``; Ctrl-C / SIGTERM send a hold first."""
    return run_node(PolicyNode, name="policy_node", setup=PolicyNode.autostart,
                    teardown=_shutdown, args=args)


if __name__ == "__main__":
    sys.exit(main())
