"""On-robot Q-Transformer policy: camera + instruction in, safe arm and gripper commands out.

A lifecycle node named ``policy``: *configure* loads the checkpoint and warms the model up,
*activate* starts the control timer, *deactivate* sends a hold command and stops, *cleanup*
releases the model. With ``autostart`` (the default) it configures and activates itself, so
``ros2 run`` / ``ros2 launch`` need no lifecycle manager.

Control: a steady timer ticks at ``control_rate``. Each tick acts on the first camera frame
received after it (so the model sees the freshest observation); if none arrives within
``max_frame_wait`` it acts on the newest frame not yet used. Frames are never queued: the image
subscription keeps only the newest one. Commands pass the safety filter of
``qt_ros.control.safety`` and an adapter of ``qt_ros.nodes.adapters``; every step publishes a
``PolicyStep`` (bins, Q values, receipt-to-publish time).

Safety: nothing is sent before the first valid frame and instruction, nor while disabled (the
``~/enable`` service; disabled at start unless ``start_enabled``). A missing or stale input
(image, instruction, state), a non-finite model output (action or Q values), or a terminate
action stops the commands: one hold command, one log line, then silence until the cause is gone.
Terminate also asks the recorder to end the episode and disables the node.

Run: ``ros2 run qt_ros policy_node --ros-args -p checkpoint:=/path/to/checkpoint``
or ``python -m qt_ros.nodes.policy_node --ros-args ...``.
"""

from __future__ import annotations

import array
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool

from qt_ros.control.safety import (
    CommandGate,
    Freshness,
    SafetyFilter,
    SafetyLimits,
    non_finite_dims,
)
from qt_ros.data.images import ImageConversionError, to_rgb8
from qt_ros.msg import EpisodeEvent, PolicyStep
from qt_ros.nodes.adapters import (
    AdapterConfigError,
    ArmAdapter,
    ArmConfig,
    GripperAdapter,
    GripperConfig,
)
from qt_ros.nodes.qos import (
    COMMAND_QOS,
    EPISODE_EVENTS_QOS,
    INSTRUCTION_QOS,
    LATEST_SENSOR_QOS,
    POLICY_STEP_QOS,
)
from qt_ros.nodes.runner import run_node
from qt_ros.srv import EndEpisode

NODE_NAME = "policy"
SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE

DEFAULT_ARM_DIMENSIONS = ["x", "y", "z", "roll", "pitch", "yaw"]
# Per control step, in the policy's units (default tokenizer: m and rad per step, gripper 0..1).
# At 10 Hz: at most 0.1 m/s and 0.5 rad/s, reached over two steps.
DEFAULT_LOWER = [-0.01, -0.01, -0.01, -0.05, -0.05, -0.05, 0.0]
DEFAULT_UPPER = [0.01, 0.01, 0.01, 0.05, 0.05, 0.05, 1.0]
DEFAULT_MAX_CHANGE = [0.005, 0.005, 0.005, 0.025, 0.025, 0.025, 1.0]

# name -> (default, description)
PARAMETERS: dict[str, tuple[object, str]] = {
    "checkpoint": ("", "checkpoint directory (model.safetensors + config.json); required"),
    "device": ("cpu", "torch device for the model: cpu, cuda or cuda:N"),
    "num_threads": (1, "torch CPU threads (0: torch's default, one per core); more threads "
                    "help only when cores are idle"),
    "warmup_steps": (3, "model calls on a blank frame during configure"),
    "autostart": (True, "configure and activate at start-up (no lifecycle manager needed)"),
    "start_enabled": (False, "command the robot without a call to ~/enable first"),
    "control_rate": (10.0, "control steps per second (Hz)"),
    "max_frame_wait": (0.05, "seconds a tick waits for a newer frame before using the newest "
                       "unused one (0: act at the tick)"),
    "image_transport": ("raw", "raw: sensor_msgs/Image on 'image'; compressed: "
                        "sensor_msgs/CompressedImage on 'image/compressed'"),
    "image_width": (0, "expected frame width; frames of another size are dropped (0: any)"),
    "image_height": (0, "expected frame height; frames of another size are dropped (0: any)"),
    "image_timeout": (0.5, "stop (one hold command) when no valid frame came for this long (s)"),
    "instruction_timeout": (0.0, "stop when the instruction is older than this (s); 0: a "
                            "latched instruction never expires"),
    "state_source": ("none", "robot state given to the policy: none, joint_states "
                     "(positions of joint_names) or pose (geometry_msgs/PoseStamped on 'pose')"),
    "state_timeout": (0.5, "stop when the state, or the joint positions that delta joint "
                      "targets need, is older than this (s)"),
    # [""] rather than an unset STRING_ARRAY: rclpy answers get_parameters (ros2 param dump)
    # with nothing when any asked-for parameter is unset. Empty names are dropped on reading.
    "joint_names": ([""], "arm joints in order: the joint adapters' "
                    "joint names and the joint_states state vector"),
    "arm_adapter": ("twist", "arm command message: twist (TwistStamped, MoveIt Servo), "
                    "joint_trajectory (JointTrajectory) or float64_array (Float64MultiArray)"),
    "arm_action": ("delta", "meaning of the policy's arm values: delta (per-step change) or "
                   "absolute (the twist, velocity or position itself)"),
    "arm_dimensions": (DEFAULT_ARM_DIMENSIONS, "policy action dimensions sent to the arm, in "
                       "command order"),
    "frame_id": ("base_link", "frame_id of twist commands"),
    "float64_array_interface": ("position", "float64_array arm adapter: the controller's "
                                "interface, position or velocity"),
    "trajectory_duration": (0.0, "time_from_start of JointTrajectory points (s); 0: one "
                            "control period"),
    "gripper_adapter": ("float64", "gripper command message: float64 (Float64), float64_array "
                        "(Float64MultiArray), joint_trajectory (JointTrajectory) or none"),
    "gripper_dimension": ("gripper", "policy action dimension sent to the gripper ('' for "
                          "none)"),
    "gripper_open_position": (0.0, "gripper command for the policy's lowest gripper value"),
    "gripper_closed_position": (1.0, "gripper command for the policy's highest gripper value"),
    "gripper_joint_names": ([""], "gripper joints (float64_array, "
                            "joint_trajectory gripper adapters)"),
    "lower_limits": (DEFAULT_LOWER, "smallest command of each arm dimension, then the "
                     "gripper, in the policy's units"),
    "upper_limits": (DEFAULT_UPPER, "largest command of each arm dimension, then the gripper"),
    "max_change_per_step": (DEFAULT_MAX_CHANGE, "largest change of each arm dimension, then "
                            "the gripper, from one step to the next"),
    "end_episode_on_terminate": (True, "on a terminate action, ask the recorder "
                                 "(recorder/end_episode) to end the episode"),
}


class ConfigError(ValueError):
    """A parameter value the node cannot work with: names the parameter and what to set."""


@dataclass
class Frame:
    rgb: np.ndarray  # H x W x 3 uint8
    received: float  # time.monotonic() at receipt
    header: object  # std_msgs/Header of the image
    seq: int


@dataclass
class PolicyNodeStats:
    """Counters and timings (seconds) kept by the node; the benchmark reads them."""

    frames_received: int = 0
    frames_dropped: int = 0
    steps: int = 0
    holds: int = 0
    missed_deadlines: int = 0
    latency: deque = field(default_factory=lambda: deque(maxlen=100_000))  # receipt -> publish
    model_time: deque = field(default_factory=lambda: deque(maxlen=100_000))  # policy.act
    # header stamp -> receipt (wall clocks; meaningful when the camera runs on this machine)
    transport: deque = field(default_factory=lambda: deque(maxlen=100_000))


class PolicyNode(LifecycleNode):
    """The ``policy`` lifecycle node (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        for name, (default, description) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=description))
        self.stats = PolicyNodeStats()
        self._enabled = bool(self._param("start_enabled"))
        self._active = False
        self._policy = None
        self._gate = CommandGate()
        self._throttle: dict[str, tuple[float, int]] = {}
        self._entities: list = []  # publishers/subscriptions/clients of the configured node
        self._timers: list = []
        self._reset_inputs()
        self._enable_srv = self.create_service(SetBool, "~/enable", self._on_enable)

    # ---------------------------------------------------------------- parameters

    def _param(self, name: str):
        value = self.get_parameter(name).value
        if isinstance(value, (list, tuple, array.array)):
            return [v for v in value if v != ""]
        return value

    def _read_config(self, tokenizer, state_dim: int) -> None:
        """Check the parameters against the checkpoint's action space; raise ConfigError."""
        names = list(tokenizer.names)
        self._names = names
        rate = float(self._param("control_rate"))
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"control_rate must be > 0 Hz, got {rate}")
        self._period = 1.0 / rate
        self._max_frame_wait = float(self._param("max_frame_wait"))
        if not 0 <= self._max_frame_wait < self._period:
            raise ConfigError(f"max_frame_wait must be in [0, control period {self._period:g} s),"
                              f" got {self._max_frame_wait}")
        arm_dims = [str(d) for d in self._param("arm_dimensions")]
        gripper_dim = str(self._param("gripper_dimension"))
        for label, dims in (("arm_dimensions", arm_dims),
                            ("gripper_dimension", [gripper_dim] if gripper_dim else [])):
            unknown = [d for d in dims if d not in names]
            if unknown:
                raise ConfigError(f"{label}: {unknown} not in the checkpoint's action dimensions "
                                  f"{names}")
        if tokenizer.terminate in arm_dims + [gripper_dim]:
            raise ConfigError(f"the terminate dimension '{tokenizer.terminate}' cannot be "
                              f"commanded; remove it from arm_dimensions / gripper_dimension")
        commanded = arm_dims + ([gripper_dim] if gripper_dim else [])
        self._num_arm = len(arm_dims)
        self._cmd_index = np.array([names.index(d) for d in commanded], dtype=np.int64)
        try:
            limits = SafetyLimits.create(commanded, self._param("lower_limits"),
                                         self._param("upper_limits"),
                                         self._param("max_change_per_step"))
        except ValueError as e:
            raise ConfigError(f"{e} (parameters lower_limits / upper_limits / "
                              f"max_change_per_step, order: {' '.join(commanded)})") from e
        self._safety = SafetyFilter(limits)
        joint_names = tuple(str(j) for j in self._param("joint_names"))
        self._joint_names = joint_names
        try:
            self._arm = ArmAdapter(ArmConfig(
                adapter=str(self._param("arm_adapter")), action=str(self._param("arm_action")),
                num_dims=len(arm_dims), control_period=self._period,
                frame_id=str(self._param("frame_id")), joint_names=joint_names,
                float64_array_interface=str(self._param("float64_array_interface")),
                trajectory_duration=float(self._param("trajectory_duration"))))
            gripper_adapter = str(self._param("gripper_adapter")) if gripper_dim else "none"
            g = names.index(gripper_dim) if gripper_dim else 0
            self._gripper = GripperAdapter(GripperConfig(
                adapter=gripper_adapter, value_low=tokenizer.low[g], value_high=tokenizer.high[g],
                open_position=float(self._param("gripper_open_position")),
                closed_position=float(self._param("gripper_closed_position")),
                joint_names=tuple(str(j) for j in self._param("gripper_joint_names")),
                trajectory_duration=float(self._param("trajectory_duration")) or self._period))
        except AdapterConfigError as e:
            raise ConfigError(str(e)) from e
        self._has_gripper = bool(gripper_dim)
        transport = str(self._param("image_transport"))
        if transport not in ("raw", "compressed"):
            raise ConfigError(f"image_transport must be raw or compressed, got '{transport}'")
        self._transport = transport
        self._image_size = (int(self._param("image_height")), int(self._param("image_width")))
        state_source = str(self._param("state_source"))
        if state_source not in ("none", "joint_states", "pose"):
            raise ConfigError(f"state_source must be none, joint_states or pose, got "
                              f"'{state_source}'")
        expected = {"none": 0, "joint_states": len(joint_names), "pose": 7}[state_source]
        if state_source == "joint_states" and not joint_names:
            raise ConfigError("state_source joint_states needs joint_names")
        if expected != state_dim:
            raise ConfigError(f"the checkpoint expects a state of {state_dim} values but "
                              f"state_source '{state_source}' gives {expected}"
                              + (" (set state_source)" if state_dim else ""))
        self._state_source = state_source
        self._use_joint_states = state_source == "joint_states" or self._arm.needs_joint_positions
        if self._use_joint_states and not joint_names:
            raise ConfigError(f"arm_adapter '{self._arm.config.adapter}' with arm_action "
                              f"'delta' needs joint_names (targets = joint_states + delta)")
        self._fresh = Freshness()
        self._fresh.watch("image", float(self._param("image_timeout")),
                          "waiting for the first valid image")
        self._fresh.watch("instruction", float(self._param("instruction_timeout")),
                          "waiting for an instruction")
        state_timeout = float(self._param("state_timeout"))
        if self._use_joint_states:
            self._fresh.watch("joint_states", state_timeout, "waiting for joint_states")
        if state_source == "pose":
            self._fresh.watch("pose", state_timeout, "waiting for a pose")

    # ---------------------------------------------------------------- lifecycle

    def autostart(self) -> bool:
        """Configure and activate when the ``autostart`` parameter says so."""
        if not self._param("autostart"):
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
            self._configure()
        except ConfigError as e:
            self.get_logger().error(f"configure failed: {e}")
            self._release()
            return FAILURE
        except Exception as e:  # noqa: BLE001 - the user must see why, not a silent FAILURE
            self.get_logger().error(f"configure failed: {type(e).__name__}: {e}")
            self._release()
            return FAILURE
        return SUCCESS

    def _configure(self) -> None:
        checkpoint = str(self._param("checkpoint"))
        if not checkpoint:
            raise ConfigError("parameter 'checkpoint' is empty: set it to a checkpoint "
                              "directory, e.g. `ros2 launch qt_ros policy.launch.py "
                              "checkpoint:=/path/to/checkpoint`")
        import torch

        from qt_ros.qtransformer.checkpoint import load_policy

        threads = int(self._param("num_threads"))
        if threads > 0:
            torch.set_num_threads(threads)
        device = str(self._param("device"))
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device '{device}' asked for but CUDA is not available here; "
                              f"set device:=cpu")
        start = time.monotonic()
        try:
            policy = load_policy(checkpoint, device=device)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"cannot load checkpoint '{checkpoint}': {e}") from e
        self._read_config(policy.tokenizer, int(policy.state_dim))
        self._warm_up(policy)
        self._policy = policy
        self.get_logger().info(
            f"loaded {policy.model_id} from {checkpoint} on {device} in "
            f"{time.monotonic() - start:.1f} s; action dimensions {' '.join(self._names)}; "
            f"control at {1 / self._period:g} Hz; arm adapter {self._arm.config.adapter}")
        self._create_entities()

    def _warm_up(self, policy) -> None:
        h, w = self._image_size if all(self._image_size) else policy.image_size
        blank = np.zeros((h, w, 3), dtype=np.uint8)
        state = np.zeros(policy.state_dim, dtype=np.float32) if policy.state_dim else None
        policy.reset("warm up")
        for _ in range(max(0, int(self._param("warmup_steps")))):
            policy.act(blank, state)

    def _create_entities(self) -> None:
        image_type, image_topic = ((Image, "image") if self._transport == "raw"
                                   else (CompressedImage, "image/compressed"))
        image_sub = self.create_subscription(image_type, image_topic, self._on_image,
                                             LATEST_SENSOR_QOS)
        self._image_topic = image_sub.topic_name
        self._step_pub = self.create_publisher(PolicyStep, "policy_step", POLICY_STEP_QOS)
        self._arm_pub = self.create_publisher(self._arm.msg_type, "arm_command", COMMAND_QOS)
        self._gripper_pub = (None if self._gripper.msg_type is None else self.create_publisher(
            self._gripper.msg_type, "gripper_command", COMMAND_QOS))
        self._end_client = self.create_client(EndEpisode, "recorder/end_episode")
        self._entities = [image_sub, self._step_pub, self._arm_pub, self._end_client,
                          self.create_subscription(String, "instruction", self._on_instruction,
                                                   INSTRUCTION_QOS),
                          self.create_subscription(EpisodeEvent, "episode_events",
                                                   self._on_episode_event, EPISODE_EVENTS_QOS)]
        if self._gripper_pub is not None:
            self._entities.append(self._gripper_pub)
        if self._use_joint_states:
            self._entities.append(self.create_subscription(
                JointState, "joint_states", self._on_joint_states, LATEST_SENSOR_QOS))
        if self._state_source == "pose":
            self._entities.append(self.create_subscription(
                PoseStamped, "pose", self._on_pose, LATEST_SENSOR_QOS))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._restart()
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._wait_timer = self.create_timer(max(self._max_frame_wait, 1e-3), self._on_frame_wait,
                                             clock=steady, autostart=False)
        self._timers = [self.create_timer(self._period, self._on_tick, clock=steady),
                        self._wait_timer]
        self._active = True
        self.get_logger().info("active" + ("" if self._enabled else
                                           ": disabled until a call to ~/enable"))
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop("deactivated")
        self._stop_timers()
        self._log_stats()
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
        """Send the hold command if moving and stop the timers (Ctrl-C, shutdown, errors).

        Waits (briefly) until the controllers acknowledged the hold: the process may exit next.
        """
        if self._active:
            self._stop(reason)
            self._stop_timers()
            for pub in (self._arm_pub, self._gripper_pub):
                if pub is not None:
                    pub.wait_for_all_acked(Duration(seconds=0.5))

    def _stop_timers(self) -> None:
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers = []
        self._active = False
        self._pending = None

    def _release(self) -> None:
        for entity in self._entities:
            destroy = {"Subscription": self.destroy_subscription,
                       "Publisher": self.destroy_publisher,
                       "Client": self.destroy_client}[type(entity).__name__]
            destroy(entity)
        self._entities = []
        self._policy = None
        self._reset_inputs()

    def _reset_inputs(self) -> None:
        self._frame: Frame | None = None
        self._frame_seq = 0
        self._used_seq = 0
        self._pending: float | None = None  # tick time of the step waiting for a frame
        self._instruction: str | None = None
        self._joint_positions: np.ndarray | None = None
        self._pose: np.ndarray | None = None
        self._episode_id = ""

    def _restart(self) -> None:
        """New start (activate, enable): fresh frame history and rate limiter."""
        if self._policy is not None and self._instruction is not None:
            self._policy.reset(self._instruction)
        rest = self._arm.rest(self._measured_joints())
        self._safety.reset(np.concatenate([rest, [np.nan] * (len(self._cmd_index) - len(rest))]))
        self._pending = None

    # ---------------------------------------------------------------- inputs

    def _on_image(self, msg) -> None:
        if not self._active:
            return
        now = time.monotonic()
        stamp = msg.header.stamp
        self.stats.frames_received += 1
        self.stats.transport.append(time.time() - (stamp.sec + stamp.nanosec * 1e-9))
        try:
            rgb = to_rgb8(msg, self._image_topic)
            h, w = self._image_size
            if (h and rgb.shape[0] != h) or (w and rgb.shape[1] != w):
                raise ImageConversionError(
                    f"frame on topic '{self._image_topic}' is {rgb.shape[1]}x{rgb.shape[0]}, "
                    f"expected {w or 'any'}x{h or 'any'} (parameters image_width/image_height)")
        except (ImageConversionError, ValueError, cv2.error) as e:
            self.stats.frames_dropped += 1
            self._warn_throttled("image", f"dropped a malformed frame: {e}")
            return
        self._frame_seq += 1
        self._frame = Frame(rgb, now, msg.header, self._frame_seq)
        self._fresh.mark("image", now)
        if self._pending is not None:
            self._step(self._frame)

    def _on_instruction(self, msg: String) -> None:
        text = msg.data.strip()
        if not text:
            self.get_logger().warning("empty instruction received: not commanding until a "
                                      "non-empty one arrives")
            self._instruction = None
            self._fresh.clear("instruction")
            return
        self._fresh.mark("instruction", time.monotonic())
        if text != self._instruction:
            self._instruction = text
            self._policy.reset(text)
            self.get_logger().info(f"instruction: '{text}'")

    def _on_joint_states(self, msg: JointState) -> None:
        index = {name: i for i, name in enumerate(msg.name)}
        missing = [j for j in self._joint_names if j not in index]
        if missing or len(msg.position) != len(msg.name):
            self._warn_throttled("joint_states", f"dropped joint_states: joints {missing} "
                                 f"missing or positions/names of different lengths")
            return
        positions = np.array([msg.position[index[j]] for j in self._joint_names])
        if not np.isfinite(positions).all():
            self._warn_throttled("joint_states", "dropped joint_states with non-finite positions")
            return
        self._joint_positions = positions
        self._fresh.mark("joint_states", time.monotonic())

    def _on_pose(self, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        pose = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])
        if not np.isfinite(pose).all():
            self._warn_throttled("pose", "dropped a pose with non-finite values")
            return
        self._pose = pose
        self._fresh.mark("pose", time.monotonic())

    def _on_episode_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.STARTED:
            self._episode_id = msg.episode_id
        elif msg.event == EpisodeEvent.ENDED and msg.episode_id == self._episode_id:
            self._episode_id = ""

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response):
        if request.data and not self._enabled:
            self._enabled = True
            if self._policy is not None:
                self._restart()
            self.get_logger().info("enabled")
        elif not request.data and self._enabled:
            self._enabled = False
            if self._active:
                self._stop("disabled by ~/enable")
        response.success = True
        response.message = "enabled" if self._enabled else "disabled"
        if self._enabled and not self._active:
            response.message += " (the node is not active: commands start once it is)"
        return response

    # ---------------------------------------------------------------- control

    def _blocker(self, now: float) -> str | None:
        """Why the node may not command at this tick, or None."""
        if not self._enabled:
            return "disabled: call the ~/enable service (std_srvs/SetBool) to start"
        problems = self._fresh.problems(now)
        return problems[0] if problems else None

    def _on_tick(self) -> None:
        now = time.monotonic()
        if self._pending is not None:  # no step at all in the last period
            self._missed_deadline("no new valid frame within the control period")
        self._pending = None
        reason = self._blocker(now)
        if reason is not None:
            self._stop(reason)
            return
        self._pending = now
        if self._max_frame_wait > 0:
            self._wait_timer.reset()
        else:
            self._on_frame_wait()

    def _on_frame_wait(self) -> None:
        self._wait_timer.cancel()
        frame = self._frame
        if self._pending is not None and frame is not None and frame.seq != self._used_seq:
            self._step(frame)
        # Otherwise the next valid frame runs the step (late, maybe still before the deadline).

    def _state(self) -> np.ndarray | None:
        if self._state_source == "joint_states":
            return self._joint_positions.astype(np.float32)
        if self._state_source == "pose":
            return self._pose.astype(np.float32)
        return None

    def _measured_joints(self) -> np.ndarray | None:
        return self._joint_positions if self._use_joint_states else None

    def _step(self, frame: Frame) -> None:
        tick, self._pending = self._pending, None
        self._wait_timer.cancel()
        self._used_seq = frame.seq
        start = time.monotonic()
        try:
            result = self._policy.act(frame.rgb, self._state())
        except Exception as e:  # noqa: BLE001 - a model error must stop the arm, not the node
            self._stop(f"the policy failed on a frame: {type(e).__name__}: {e}", fault=True)
            return
        model_time = time.monotonic() - start
        bad = non_finite_dims(self._names, result.action, result.q_values)
        if bad:
            self._stop(f"non-finite model output in {', '.join(bad)}; waiting for fresh input",
                       fault=True)
            return
        if result.terminate:
            self._publish_step(frame, result, time.monotonic() - frame.received)
            self._stop("the policy chose to terminate: call ~/enable to start the next episode",
                       force_hold=True)
            self._enabled = False
            if self._param("end_episode_on_terminate"):
                self._end_episode()
            return
        values = np.asarray(result.action, dtype=np.float64)[self._cmd_index]
        filtered = self._safety.apply(values).values
        stamp = self.get_clock().now().to_msg()
        try:
            arm_msg = self._arm.command(filtered[:self._num_arm], stamp, self._measured_joints())
        except ValueError as e:
            self._stop(f"cannot build the arm command: {e}", fault=True)
            return
        self._arm_pub.publish(arm_msg)
        if self._has_gripper and self._gripper_pub is not None:
            self._gripper_pub.publish(self._gripper.command(filtered[self._num_arm]))
        latency = time.monotonic() - frame.received
        self._publish_step(frame, result, latency)
        self.stats.steps += 1
        self.stats.latency.append(latency)
        self.stats.model_time.append(model_time)
        if tick is not None and time.monotonic() - tick > self._period:
            self._missed_deadline("the step finished after the next tick was due")
        change = self._gate.commanded()
        if change.log:
            self.get_logger().info(change.log)

    def _publish_step(self, frame: Frame, result, latency: float) -> None:
        msg = PolicyStep()
        msg.header = frame.header
        msg.episode_id = self._episode_id
        msg.instruction = self._instruction or ""
        msg.action_bins = [int(b) for b in result.bins]
        msg.action = [float(a) for a in result.action]
        msg.dimension_names = list(self._names)
        msg.q_values = [float(q) for q in result.q_values]
        msg.terminate = bool(result.terminate)
        msg.inference_time = float(latency)
        msg.model_id = str(self._policy.model_id)
        self._step_pub.publish(msg)

    def _stop(self, reason: str, force_hold: bool = False, fault: bool = False) -> None:
        """Stop commanding: one hold command if the arm may be moving, one log line (a
        warning when it stops motion or for a fault, else info)."""
        self._pending = None
        change = self._gate.block(reason)
        if change.hold or force_hold:
            self._publish_hold()
        if change.log and (change.hold or force_hold or fault):
            self.get_logger().warning(change.log)
        elif change.log:
            self.get_logger().info(change.log)

    def _publish_hold(self) -> None:
        measured = self._measured_joints()
        arm_msg = self._arm.hold(self.get_clock().now().to_msg(), measured)
        if arm_msg is not None:
            self._arm_pub.publish(arm_msg)
        gripper_msg = self._gripper.hold() if self._gripper_pub is not None else None
        if gripper_msg is not None:
            self._gripper_pub.publish(gripper_msg)
        self.stats.holds += 1
        previous = self._safety.previous
        rest = self._arm.rest(measured)
        self._safety.reset(np.concatenate([rest, previous[len(rest):]]))

    def _end_episode(self) -> None:
        if not self._end_client.service_is_ready():
            self.get_logger().warning(
                f"the policy terminated but {self._end_client.srv_name} is not available: "
                f"the episode was not ended (is the recorder running?)")
            return
        request = EndEpisode.Request(episode_id=self._episode_id, outcome="unknown")
        future = self._end_client.call_async(request)
        future.add_done_callback(self._on_episode_ended)

    def _on_episode_ended(self, future) -> None:
        response = future.result()
        if response is None or not response.success:
            detail = "no response" if response is None else response.message
            self.get_logger().warning(f"the recorder did not end the episode: {detail}")
        else:
            self.get_logger().info(f"episode ended by terminate: {response.bag_path}")

    def _missed_deadline(self, why: str) -> None:
        self.stats.missed_deadlines += 1
        self._warn_throttled("deadline", f"missed a control deadline: {why}")

    def _warn_throttled(self, key: str, text: str, period: float = 5.0) -> None:
        now = time.monotonic()
        last, suppressed = self._throttle.get(key, (-math.inf, 0))
        if now - last < period:
            self._throttle[key] = (last, suppressed + 1)
            return
        more = f" ({suppressed} more like this in the last {period:g} s)" if suppressed else ""
        self.get_logger().warning(text + more)
        self._throttle[key] = (now, 0)

    def _log_stats(self) -> None:
        s = self.stats
        if s.latency:
            lat = np.array(s.latency) * 1e3
            self.get_logger().info(
                f"{s.steps} steps, {s.holds} holds, {s.missed_deadlines} missed deadlines, "
                f"{s.frames_dropped}/{s.frames_received} frames dropped; image-to-command "
                f"latency p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms")


def _shutdown(node: PolicyNode) -> None:
    node.stop_safely("shutting down")
    node._log_stats()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run qt_ros policy_node``; Ctrl-C / SIGTERM send a hold first."""
    return run_node(PolicyNode, name="policy_node", setup=PolicyNode.autostart,
                    teardown=_shutdown, args=args)


if __name__ == "__main__":
    sys.exit(main())
