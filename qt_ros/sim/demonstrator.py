"""Scripted demonstrator for the simulated robot: privileged state -> action.

It sees what the camera cannot measure (block, goal and gripper positions, contacts; a
:class:`~qt_ros.sim.simulator.SimState`) and returns actions in the default tokenizer's layout
(``x y z roll pitch yaw gripper terminate``; roll pitch yaw always 0). Each decision depends
only on the current state (plus this episode's scripted mistake, if any), so it recovers from
slips: a missed grasp opens the gripper and tries again.

``lift``: move above the block, descend, close, lift; terminate once the block is held
``lift_height`` + 1 cm above the table. ``place``: then carry it over the pad, lower it, open,
move up; terminate once it rests there released.

The Q-Transformer learns from successes and failures, so the demonstrator can be made worse:
``noise`` adds Gaussian noise to every x y z delta, and ``failure_rate`` is the probability
that an episode contains one scripted mistake (:data:`MISTAKES`): grasping off-centre, dropping
the block on the way, or declaring success before lifting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qt_ros.common.settings import setting
from qt_ros.sim.simulator import BLOCK_HALF, TABLE_TOP, SimConfig, SimState

MISTAKES = ("off_center", "drop", "early_terminate")
GRASP_Z = TABLE_TOP + 0.012  # finger-tip height for grasping (the block spans 0 .. 0.04)
HOVER = 0.06  # approach height above GRASP_Z (m)
XY_TOLERANCE = 0.006  # aligned enough to descend (m)


@dataclass
class DemonstratorConfig:
    """How the scripted demonstrator acts."""

    max_step: float = setting(0.02, "largest x y z delta per step (m); keep it within the "
                                    "policy's safety limits")
    gain: float = setting(0.7, "fraction of the remaining distance moved per step (before "
                               "max_step)")
    noise: float = setting(0.0, "standard deviation of the Gaussian noise added to every x y z "
                                "delta (m per step)")
    failure_rate: float = setting(0.0, "probability of one scripted mistake per episode (0..1)")
    # A few distinct values make the same action bins recur in the data, which a briefly
    # trained Q-Transformer picks up much sooner than 256 barely repeated bins.
    quantum: float = setting(0.005, "x y z deltas are multiples of this (m; 0: continuous)")

    def __post_init__(self) -> None:
        if not 0 < self.max_step <= 0.05:
            raise ValueError(f"max_step must be in (0, 0.05] m per step, got {self.max_step}")
        if not 0 < self.gain <= 1:
            raise ValueError(f"gain must be in (0, 1], got {self.gain}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0 m, got {self.noise}")
        if not 0 <= self.failure_rate <= 1:
            raise ValueError(f"failure_rate must be in [0, 1], got {self.failure_rate}")
        if not 0 <= self.quantum <= self.max_step:
            raise ValueError(f"quantum must be in [0, max_step], got {self.quantum}")


class ScriptedDemonstrator:
    """``reset(seed)`` at each episode start, then ``act(state) -> action`` every step."""

    def __init__(self, sim_config: SimConfig | None = None,
                 config: DemonstratorConfig | None = None):
        self.sim_config = sim_config or SimConfig()
        self.config = config or DemonstratorConfig()
        self.mistake: str | None = None
        self.reset(0)

    def reset(self, seed: int) -> None:
        """New episode: draws the noise and (with ``failure_rate``) this episode's mistake."""
        self._rng = np.random.default_rng([int(seed), 7919])
        self.mistake = None
        if self._rng.random() < self.config.failure_rate:
            self.mistake = str(self._rng.choice(MISTAKES))
        self._offset = np.zeros(2)
        if self.mistake == "off_center":  # beside the block, along the fingers' width: a miss
            side = self._rng.choice([-1.0, 1.0])
            self._offset = np.array([side * self._rng.uniform(0.035, 0.045),
                                     self._rng.uniform(-0.01, 0.01)])
        self._drop_height = self._rng.uniform(0.015, 0.035)
        self._released = False

    def act(self, state: SimState) -> np.ndarray:
        """The action for ``state`` (float64 [8], the default tokenizer's layout)."""
        motion, gripper, terminate = self._decide(state)
        if self.config.noise > 0 and not terminate:
            motion = motion + self._rng.normal(0.0, self.config.noise, size=3)
        step, quantum = self.config.max_step, self.config.quantum
        motion = np.clip(motion, -step, step)
        if quantum > 0:
            motion = np.round(motion / quantum) * quantum
        if terminate:
            motion = np.zeros(3)
        return np.array([*motion, 0.0, 0.0, 0.0, gripper, float(terminate)])

    # ---------------------------------------------------------------- the script

    def _toward(self, ee: np.ndarray, target: np.ndarray) -> np.ndarray:
        return self.config.gain * (np.asarray(target, dtype=np.float64) - ee)

    def _decide(self, s: SimState) -> tuple[np.ndarray, float, bool]:
        holding = s.grasped and s.gripper_command > 0.5
        lifted = s.block[2] - BLOCK_HALF - TABLE_TOP
        lift_height = self.sim_config.lift_height
        if holding:
            if self.mistake == "early_terminate":
                return np.zeros(3), 1.0, True
            if self.mistake == "drop" and lifted > self._drop_height:
                self._released = True
                return np.zeros(3), 0.0, False  # opens mid-air
            if self.sim_config.task == "lift":
                if lifted >= lift_height + 0.01:
                    return np.zeros(3), 1.0, True
                return self._toward(s.ee, [s.ee[0], s.ee[1], GRASP_Z + lift_height + 0.03]), \
                    1.0, False
            return self._carry(s, lifted)
        if s.gripper_command > 0.5:  # closed on nothing (missed, or dropped): open, go up
            if s.finger_opening < 0.9 and s.block[2] < TABLE_TOP + BLOCK_HALF + 0.005 and \
                    np.linalg.norm(s.block[:2] - s.ee[:2]) < 0.02:
                return np.zeros(3), 1.0, False  # fingers still closing on the block
            if self.mistake is not None:  # scripted failure: gives up after the miss
                return np.zeros(3), 0.0, True
            return self._toward(s.ee, [s.ee[0], s.ee[1], GRASP_Z + HOVER]), 0.0, False
        if self.sim_config.task == "place" and self._placed(s):
            if s.ee[2] >= s.block[2] + BLOCK_HALF + 0.025:
                return np.zeros(3), 0.0, True
            return self._toward(s.ee, [s.ee[0], s.ee[1], GRASP_Z + HOVER]), 0.0, False
        if self.mistake == "drop" and self._released:
            # scripted failure: after the drop it gives up and declares the episode over
            return np.zeros(3), 0.0, True
        return self._approach(s)

    def _approach(self, s: SimState) -> tuple[np.ndarray, float, bool]:
        """Gripper open, block on the table: above it, down, close."""
        target_xy = s.block[:2] + self._offset
        error = np.linalg.norm(target_xy - s.ee[:2])
        if error > XY_TOLERANCE:
            # high enough to pass over the block, lower as it gets close
            z = GRASP_Z + (HOVER if error > 0.03 else max(s.ee[2] - GRASP_Z, 0.02))
            return self._toward(s.ee, [*target_xy, z]), 0.0, False
        if s.ee[2] > GRASP_Z + 0.004:
            return self._toward(s.ee, [*target_xy, GRASP_Z]), 0.0, False
        return np.zeros(3), 1.0, False

    def _carry(self, s: SimState, lifted: float) -> tuple[np.ndarray, float, bool]:
        """Holding the block (place task): up, over the pad, down, open."""
        to_goal = s.goal - s.block[:2]
        carry_z = GRASP_Z + 0.07
        if np.linalg.norm(to_goal) > 0.006:
            if s.ee[2] < carry_z - 0.02:
                return self._toward(s.ee, [s.ee[0], s.ee[1], carry_z]), 1.0, False
            return self._toward(s.ee, [*(s.ee[:2] + to_goal), carry_z]), 1.0, False
        if lifted > 0.004:  # aims below the grasp height: the block may have slipped up a bit
            return self._toward(s.ee, [*(s.ee[:2] + to_goal), GRASP_Z - 0.01]), 1.0, False
        return np.zeros(3), 0.0, False

    def _placed(self, s: SimState) -> bool:
        on_pad = np.linalg.norm(s.block[:2] - s.goal) <= self.sim_config.goal_radius
        return bool(on_pad and s.block[2] < TABLE_TOP + BLOCK_HALF + 0.004)
