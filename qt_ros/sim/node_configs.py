"""The parameters of the simulation's ROS nodes (``sim_robot``, ``demonstrator``), once.

Each node declares one ROS parameter per field (``qt_ros.common.settings.parameter_table``) and
builds the simulator's and demonstrator's configs from them; where a parameter is a setting of
``SimConfig`` or ``DemonstratorConfig`` its default and description come from there
(``setting_of``). ``config/sim.yaml`` sets them for the sim set-up and is checked against these
classes by test/test_config_files.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qt_ros.common.settings import setting, setting_of
from qt_ros.sim.demonstrator import DemonstratorConfig
from qt_ros.sim.simulator import TASKS, SimConfig

# The nodes speak in rates (Hz), the simulator in periods (s).
DEFAULT_CONTROL_RATE = 1.0 / SimConfig.control_period


@dataclass(frozen=True)
class SimRobotNodeConfig:
    """The ``sim_robot`` node's parameters."""

    task: str = setting_of(SimConfig, "task", "task: " + ", ".join(
        f"{name} ({instruction!r})" for name, instruction in TASKS.items()))
    seed: int = setting(0, "seed of the first episode; reset number k uses seed + k")
    control_rate: float = setting(DEFAULT_CONTROL_RATE,
                                  "physics steps of one control period per second (Hz)")
    camera_rate: float = setting(0.0, "images per second (Hz); 0: one per control tick")
    image_width: int = setting_of(SimConfig, "image_width")
    image_height: int = setting_of(SimConfig, "image_height")
    shadows: bool = setting_of(SimConfig, "shadows")
    command_timeout: float = setting(0.5, "a twist older than this (s) counts as zero velocity")
    publish_instruction: bool = setting(
        True, "publish the task's instruction on 'instruction' (latched)")
    label_episodes: bool = setting(
        True, "label episodes the recorder ends with outcome 'unknown' by the success detector "
              "(recorder/label_episode)")
    frame_id: str = setting("camera", "frame_id of the images")
    lockstep: bool = setting(
        False, "advance one control period per decision: after publishing a tick, wait for the "
               "arm_command answering it (header stamp >= the tick's) and the gripper_command, "
               "apply them for exactly one period, then publish the next tick (at most at "
               "control_rate). For evaluation; a robot does not wait (false: a steady timer, "
               "latest commands)")
    lockstep_gripper: bool = setting(
        True, "lockstep: a decision is an arm_command and a gripper_command (false: the "
              "arm_command alone, the gripper keeps its last command)")
    lockstep_resend: float = setting(
        0.5, "lockstep: while no decision answers the latest tick, send that tick again (same "
             "stamp) every this many seconds; the simulation never advances without a decision")

    def __post_init__(self) -> None:
        rate, camera_rate = self.control_rate, self.camera_rate or self.control_rate
        if not (math.isfinite(rate) and rate > 0 and math.isfinite(camera_rate)
                and camera_rate > 0):
            raise ValueError(f"control_rate and camera_rate must be > 0 Hz, got {rate} and "
                             f"{camera_rate}")
        if self.lockstep and camera_rate != rate:
            raise ValueError(f"lockstep publishes one image per tick: set camera_rate to 0 (or "
                             f"to control_rate {rate:g}), got {self.camera_rate}")
        if not (math.isfinite(self.lockstep_resend) and self.lockstep_resend > 0):
            raise ValueError(f"lockstep_resend must be > 0 s, got {self.lockstep_resend}")

    def sim_config(self) -> SimConfig:
        """The simulator's config: this task, camera and control period."""
        return SimConfig(task=self.task, control_period=1.0 / self.control_rate,
                         image_width=self.image_width, image_height=self.image_height,
                         shadows=self.shadows)


@dataclass(frozen=True)
class DemonstratorNodeConfig:
    """The ``demonstrator`` node's parameters."""

    task: str = setting_of(SimConfig, "task", "the simulator's task: " + ", ".join(TASKS))
    control_rate: float = setting(DEFAULT_CONTROL_RATE,
                                  "the simulator's control rate (Hz): twist = delta * rate")
    seed: int = setting(0, "seed of the first episode's noise and mistake; episode k uses "
                           "seed + k")
    noise: float = setting_of(DemonstratorConfig, "noise")
    failure_rate: float = setting_of(DemonstratorConfig, "failure_rate")
    max_step: float = setting_of(DemonstratorConfig, "max_step")
    quantum: float = setting_of(DemonstratorConfig, "quantum")
    start_enabled: bool = setting(False, "start the first episode without a call to ~/enable")
    end_episode_on_terminate: bool = setting(
        True, "when the script is done, call recorder/end_episode")
    frame_id: str = setting("base_link", "frame_id of the twist commands")

    def __post_init__(self) -> None:
        if not self.control_rate > 0:
            raise ValueError(f"control_rate must be > 0 Hz, got {self.control_rate}")

    def sim_config(self) -> SimConfig:
        """The simulator's config as far as the script needs it (task, control period)."""
        return SimConfig(task=self.task, control_period=1.0 / self.control_rate)

    def demonstrator_config(self) -> DemonstratorConfig:
        """How the script acts: step size, noise, mistakes, quantum."""
        return DemonstratorConfig(max_step=self.max_step, noise=self.noise,
                                  failure_rate=self.failure_rate, quantum=self.quantum)
