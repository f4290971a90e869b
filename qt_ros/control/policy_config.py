"""Every parameter of the policy node, once: :class:`PolicyConfig` (defaults, descriptions,
validation) and what becomes known only with the checkpoint (:class:`ActionLayout`).

The node declares its ROS parameters from this dataclass (``parameter_table``), reads them back
into it and calls :func:`load_policy`; ``config/policy.yaml`` is checked against it by a test.
Checks that need only the values run when the config is built; checks against the checkpoint's
action space and state size run in :meth:`PolicyConfig.resolve`. Both raise :class:`ConfigError`
with a message that names the parameter and what to set.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

from qt_ros.common.settings import setting
from qt_ros.control.safety import SafetyLimits

ARM_ADAPTERS = ("twist", "joint_trajectory", "float64_array")
ARM_ACTIONS = ("delta", "absolute")
FLOAT64_ARRAY_INTERFACES = ("position", "velocity")
GRIPPER_ADAPTERS = ("float64", "float64_array", "joint_trajectory", "none")
IMAGE_TRANSPORTS = ("raw", "compressed")
STATE_SOURCES = ("none", "joint_states", "pose")

DEFAULT_ARM_DIMENSIONS = ("x", "y", "z", "roll", "pitch", "yaw")
# Per control step, in the policy's units (default tokenizer: m and rad per step, gripper 0..1).
# At 10 Hz: at most 0.1 m/s and 0.5 rad/s, reached over two steps.
DEFAULT_LOWER = (-0.01, -0.01, -0.01, -0.05, -0.05, -0.05, 0.0)
DEFAULT_UPPER = (0.01, 0.01, 0.01, 0.05, 0.05, 0.05, 1.0)
DEFAULT_MAX_CHANGE = (0.005, 0.005, 0.005, 0.025, 0.025, 0.025, 1.0)


class ConfigError(ValueError):
    """A parameter value the node cannot work with: names the parameter and what to set."""


@dataclass(frozen=True)
class PolicyConfig:
    """The policy node's parameters (ROS parameters of the same names)."""

    checkpoint: str = setting("", "checkpoint directory (model.safetensors + config.json), or "
                              "an export of one (qt-ros export: ONNX Runtime on the CPU); "
                              "required")
    device: str = setting("cpu", "torch device for the model: cpu, cuda or cuda:N")
    num_threads: int = setting(1, "torch CPU threads (0: torch's default, one per core); more "
                               "threads help only when cores are idle")
    warmup_steps: int = setting(3, "model calls on a blank frame during configure")
    autostart: bool = setting(True, "configure and activate at start-up (no lifecycle manager "
                              "needed)")
    start_enabled: bool = setting(False, "command the robot without a call to ~/enable first")
    control_rate: float = setting(10.0, "control steps per second (Hz)")
    max_frame_wait: float = setting(0.05, "seconds a tick waits for a newer frame before using "
                                    "the newest unused one (0: act at the tick)")
    image_transport: str = setting("raw", "raw: sensor_msgs/Image on 'image'; compressed: "
                                   "sensor_msgs/CompressedImage on 'image/compressed'",
                                   choices=IMAGE_TRANSPORTS)
    image_width: int = setting(0, "expected frame width; frames of another size are dropped "
                               "(0: any)")
    image_height: int = setting(0, "expected frame height; frames of another size are dropped "
                                "(0: any)")
    image_timeout: float = setting(0.5, "stop (one hold command) when no valid frame came for "
                                   "this long (s)")
    instruction_timeout: float = setting(0.0, "stop when the instruction is older than this (s); "
                                         "0: a latched instruction never expires")
    state_source: str = setting("none", "robot state given to the policy: none, joint_states "
                                "(positions of joint_names) or pose (geometry_msgs/PoseStamped "
                                "on 'pose')", choices=STATE_SOURCES)
    state_timeout: float = setting(0.5, "stop when the state, or the joint positions that delta "
                                   "joint targets need, is older than this (s)")
    joint_names: tuple[str, ...] = setting((), "arm joints in order: the joint adapters' joint "
                                           "names and the joint_states state vector")
    arm_adapter: str = setting("twist", "arm command message: twist (TwistStamped, MoveIt "
                               "Servo), joint_trajectory (JointTrajectory) or float64_array "
                               "(Float64MultiArray)", choices=ARM_ADAPTERS)
    arm_action: str = setting("delta", "meaning of the policy's arm values: delta (per-step "
                              "change) or absolute (the twist, velocity or position itself)",
                              choices=ARM_ACTIONS)
    arm_dimensions: tuple[str, ...] = setting(DEFAULT_ARM_DIMENSIONS, "policy action dimensions "
                                              "sent to the arm, in command order")
    frame_id: str = setting("base_link", "frame_id of twist commands")
    float64_array_interface: str = setting("position", "float64_array arm adapter: the "
                                           "controller's interface, position or velocity",
                                           choices=FLOAT64_ARRAY_INTERFACES)
    trajectory_duration: float = setting(0.0, "time_from_start of JointTrajectory points (s); "
                                         "0: one control period")
    gripper_adapter: str = setting("float64", "gripper command message: float64 (Float64), "
                                   "float64_array (Float64MultiArray), joint_trajectory "
                                   "(JointTrajectory) or none", choices=GRIPPER_ADAPTERS)
    gripper_dimension: str = setting("gripper", "policy action dimension sent to the gripper "
                                     "('' for none)")
    gripper_open_position: float = setting(0.0, "gripper command for the policy's lowest "
                                           "gripper value")
    gripper_closed_position: float = setting(1.0, "gripper command for the policy's highest "
                                             "gripper value")
    gripper_joint_names: tuple[str, ...] = setting((), "gripper joints (float64_array, "
                                                   "joint_trajectory gripper adapters)")
    lower_limits: tuple[float, ...] = setting(DEFAULT_LOWER, "smallest command of each arm "
                                              "dimension, then the gripper, in the policy's "
                                              "units")
    upper_limits: tuple[float, ...] = setting(DEFAULT_UPPER, "largest command of each arm "
                                              "dimension, then the gripper")
    max_change_per_step: tuple[float, ...] = setting(DEFAULT_MAX_CHANGE, "largest change of each "
                                                     "arm dimension, then the gripper, from one "
                                                     "step to the next")
    end_episode_on_terminate: bool = setting(True, "on a terminate action, ask the recorder "
                                             "(recorder/end_episode) to end the episode")
    lockstep: bool = setting(False, "the simulator runs in lockstep (sim_robot lockstep): act "
                             "once per frame stamp, with the joint_states / pose of the same "
                             "stamp, and stamp arm commands with the frame's stamp. Off for "
                             "robots: camera and joint_states stamps differ, and MoveIt Servo "
                             "judges a command's age by its stamp")

    def __post_init__(self) -> None:
        self._normalise()
        self._check_timing()
        self._check_choices()
        self._check_arm()
        self.limits()  # raises ConfigError when the limits do not fit the commanded dimensions

    # ------------------------------------------------------------------ derived values

    @property
    def period(self) -> float:
        """Control period (s)."""
        return 1.0 / self.control_rate

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) frames must have; 0 accepts any."""
        return self.image_height, self.image_width

    @property
    def commanded(self) -> tuple[str, ...]:
        """The commanded action dimensions: the arm's, then the gripper's (if any)."""
        return self.arm_dimensions + ((self.gripper_dimension,) if self.gripper_dimension else ())

    @property
    def arm_velocity(self) -> bool:
        """True when the arm command is a velocity (hold = zero), False for position targets."""
        return self.arm_adapter == "twist" or (
            self.arm_adapter == "float64_array" and self.float64_array_interface == "velocity")

    @property
    def uses_joint_states(self) -> bool:
        """Whether the node needs joint_states: as the state, or for delta position targets
        (target = measured position + delta)."""
        return self.state_source == "joint_states" or (
            not self.arm_velocity and self.arm_action == "delta")

    def limits(self) -> SafetyLimits:
        """The safety limits of the commanded dimensions."""
        try:
            return SafetyLimits.create(self.commanded, self.lower_limits, self.upper_limits,
                                       self.max_change_per_step)
        except ValueError as e:
            raise ConfigError(f"{e} (parameters lower_limits / upper_limits / "
                              f"max_change_per_step, order: {' '.join(self.commanded)})") from e

    def resolve(self, tokenizer: Any, state_dim: int) -> ActionLayout:
        """Check the parameters against the checkpoint's action space (``tokenizer``: names,
        low, high, terminate) and state size; return where the commanded values are."""
        names = tuple(str(n) for n in tokenizer.names)
        gripper = (self.gripper_dimension,) if self.gripper_dimension else ()
        for label, dims in (("arm_dimensions", self.arm_dimensions),
                            ("gripper_dimension", gripper)):
            unknown = [d for d in dims if d not in names]
            if unknown:
                raise ConfigError(f"{label}: {unknown} not in the checkpoint's action dimensions "
                                  f"{list(names)}")
        if tokenizer.terminate in self.commanded:
            raise ConfigError(f"the terminate dimension '{tokenizer.terminate}' cannot be "
                              f"commanded; remove it from arm_dimensions / gripper_dimension")
        expected = {"none": 0, "joint_states": len(self.joint_names), "pose": 7}[self.state_source]
        if expected != state_dim:
            raise ConfigError(f"the checkpoint expects a state of {state_dim} values but "
                              f"state_source '{self.state_source}' gives {expected}"
                              + (" (set state_source)" if state_dim else ""))
        g = names.index(self.gripper_dimension) if gripper else None
        return ActionLayout(
            names=names, index=tuple(names.index(d) for d in self.commanded),
            num_arm=len(self.arm_dimensions), state_dim=int(state_dim),
            gripper_range=None if g is None else (float(tokenizer.low[g]),
                                                  float(tokenizer.high[g])))

    # ------------------------------------------------------------------ validation

    def _normalise(self) -> None:
        """ROS gives arrays as lists or array.array and string arrays as [""] when empty (see
        ``parameter_table``): store tuples without the empty strings."""
        for name, kind in _TUPLE_ITEMS.items():
            value = getattr(self, name)
            if not isinstance(value, str):
                object.__setattr__(self, name, tuple(kind(v) for v in value if v != ""))

    def _check_timing(self) -> None:
        rate = float(self.control_rate)
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"control_rate must be > 0 Hz, got {rate}")
        if not 0 <= self.max_frame_wait < self.period:
            raise ConfigError(f"max_frame_wait must be in [0, control period {self.period:g} s),"
                              f" got {self.max_frame_wait}")
        if not self.trajectory_duration >= 0:
            raise ConfigError(f"trajectory_duration must be >= 0 s, got "
                              f"{self.trajectory_duration}")

    def _check_choices(self) -> None:
        if self.image_transport not in IMAGE_TRANSPORTS:
            raise ConfigError(f"image_transport must be raw or compressed, got "
                              f"'{self.image_transport}'")
        if self.state_source not in STATE_SOURCES:
            raise ConfigError(f"state_source must be none, joint_states or pose, got "
                              f"'{self.state_source}'")
        for name, allowed in (("arm_adapter", ARM_ADAPTERS), ("arm_action", ARM_ACTIONS),
                              ("float64_array_interface", FLOAT64_ARRAY_INTERFACES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} '{getattr(self, name)}' is not one of "
                                  f"{', '.join(allowed)}")
        # Without a gripper dimension the gripper parameters are not used.
        if self.gripper_dimension and self.gripper_adapter not in GRIPPER_ADAPTERS:
            raise ConfigError(f"gripper_adapter '{self.gripper_adapter}' is not one of "
                              f"{', '.join(GRIPPER_ADAPTERS)}")
        if (self.gripper_dimension and self.gripper_adapter == "joint_trajectory"
                and not self.gripper_joint_names):
            raise ConfigError("gripper_adapter 'joint_trajectory' needs gripper_joint_names")

    def _check_arm(self) -> None:
        num_dims, joints = len(self.arm_dimensions), list(self.joint_names)
        if self.arm_adapter == "twist" and num_dims not in (3, 6):
            raise ConfigError(
                f"arm_adapter 'twist' needs 3 (x y z) or 6 (x y z roll pitch yaw) arm_dimensions, "
                f"got {num_dims}")
        if self.arm_adapter != "twist" and len(joints) != num_dims:
            raise ConfigError(
                f"arm_adapter '{self.arm_adapter}' needs one joint in joint_names per arm "
                f"dimension: {num_dims} arm_dimensions but joint_names = {joints}")
        if self.state_source == "joint_states" and not joints:
            raise ConfigError("state_source joint_states needs joint_names")
        if self.uses_joint_states and not joints:
            raise ConfigError(f"arm_adapter '{self.arm_adapter}' with arm_action 'delta' needs "
                              f"joint_names (targets = joint_states + delta)")


@dataclass(frozen=True)
class ActionLayout:
    """Where the commanded values are in the checkpoint's action vector.

    Attributes:
        names: every action dimension of the checkpoint, in order.
        index: position in ``names`` of each commanded dimension (arm, then gripper).
        num_arm: how many of them go to the arm.
        state_dim: size of the state vector the policy takes (0: none).
        gripper_range: the tokenizer's (low, high) of the gripper dimension, None without one.
    """

    names: tuple[str, ...]
    index: tuple[int, ...]
    num_arm: int
    state_dim: int
    gripper_range: tuple[float, float] | None


# Item type of each tuple field (str or float), for _normalise.
_TUPLE_ITEMS = {name: typing.get_args(hint)[0]
                for name, hint in typing.get_type_hints(PolicyConfig).items()
                if typing.get_origin(hint) is tuple}


def load_policy(config: PolicyConfig) -> tuple[Any, ActionLayout]:
    """Load the checkpoint of ``config``, check the parameters against it, warm the model up.

    Returns the policy and its action layout. Raises :class:`ConfigError` for a missing or
    unreadable checkpoint, an unusable device or parameters that do not fit the checkpoint.
    """
    if not config.checkpoint:
        raise ConfigError("parameter 'checkpoint' is empty: set it to a checkpoint "
                          "directory, e.g. `ros2 launch qt_ros policy.launch.py "
                          "checkpoint:=/path/to/checkpoint`")
    import torch  # here, not at the top: `--help` and the config tests load no torch

    from qt_ros.qtransformer import checkpoint

    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{config.device}' asked for but CUDA is not available here; "
                          f"set device:=cpu")
    from qt_ros.qtransformer.exported_policy import ExportedPolicy, is_export

    if is_export(config.checkpoint) and config.device != "cpu":
        raise ConfigError(f"'{config.checkpoint}' is an exported model (qt-ros export), which "
                          f"runs on the CPU: set device:=cpu, or point checkpoint at the "
                          f"checkpoint itself to use '{config.device}'")
    try:
        policy = (ExportedPolicy(config.checkpoint, threads=config.num_threads)
                  if is_export(config.checkpoint)
                  else checkpoint.load_policy(config.checkpoint, device=config.device))
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"cannot load checkpoint '{config.checkpoint}': {e}") from e
    layout = config.resolve(policy.tokenizer, int(policy.state_dim))
    warm_up(policy, config)
    return policy, layout


def warm_up(policy: Any, config: PolicyConfig) -> None:
    """Run the model ``warmup_steps`` times on a blank frame, so the first real step is fast."""
    h, w = config.image_size if all(config.image_size) else policy.image_size
    blank = np.zeros((h, w, 3), dtype=np.uint8)
    state = np.zeros(policy.state_dim, dtype=np.float32) if policy.state_dim else None
    policy.reset("warm up")
    for _ in range(max(0, config.warmup_steps)):
        policy.act(blank, state)
