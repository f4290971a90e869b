"""The policy node's outputs applied to the simulator directly: a
:class:`~qt_ros.control.control_loop.ControlOutput` whose commands become
:meth:`TabletopSim.step <qt_ros.sim.simulator.TabletopSim.step>` actions.

The numbers are those of the ROS path, step for step: the policy node's ``twist`` adapter sends
``velocity = delta / control period`` (``nodes/adapters.py``, ``ArmAdapter.command``), the
``sim_robot`` node moves by ``velocity * its period`` and ignores the angular part
(``nodes/sim_robot_node.py``, ``_on_tick``); the ``float64`` gripper adapter maps the policy's
gripper range linearly onto ``gripper_open_position .. gripper_closed_position``
(``GripperAdapter.position``) and the sim clips it to [0, 1] and holds it until the next one. A
hold is a zero twist with the last gripper command. The shell's modules build ROS messages, so
this module restates their arithmetic (a few lines) instead of importing them.
"""

from __future__ import annotations

import numpy as np

from qt_ros.control.control_loop import StepRecord
from qt_ros.control.policy_config import ActionLayout, PolicyConfig


class SimOutput:
    """Collects what the control loop sends during one control step (see the module docstring).

    Per episode: :meth:`begin`, then per step the loop's calls and one :meth:`take_action`.

    Attributes:
        ended: the loop asked to end the episode (the policy chose terminate).
        holds, steps: hold commands and published steps in this episode.
        warnings: the loop's warnings in this episode (stops, faults; not the hold line of a
            terminate, which is how an episode normally ends).
        last_step: the last published :class:`StepRecord`.
    """

    def __init__(self, config: PolicyConfig, layout: ActionLayout, sim_period: float):
        self._policy_period = config.period
        self._sim_period = float(sim_period)
        self._num_arm = layout.num_arm
        self._value_range = layout.gripper_range or (0.0, 1.0)
        self._positions = (config.gripper_open_position, config.gripper_closed_position)
        self.begin()

    def begin(self, noise: float = 0.0, rng: np.random.Generator | None = None) -> None:
        """A new episode: the sim starts with the gripper open and no twist."""
        self._twist: np.ndarray | None = None
        self._gripper = 0.0
        self._noise, self._rng = float(noise), rng
        self.ended = False
        self.holds = self.steps = 0
        self.warnings: list[str] = []
        self.last_step: StepRecord | None = None
        self._terminating = False

    # ------------------------------------------------------------------ ControlOutput

    def command(self, arm: np.ndarray, gripper: float | None,
                joints: np.ndarray | None) -> None:
        self._twist = np.asarray(arm, dtype=np.float64)[:3] / self._policy_period
        if gripper is not None:
            low, high = self._value_range
            fraction = (float(gripper) - low) / (high - low)
            position = self._positions[0] + fraction * (self._positions[1] - self._positions[0])
            self._gripper = float(np.clip(position, 0.0, 1.0))

    def hold(self, joints: np.ndarray | None) -> None:
        self._twist = np.zeros(3)
        self.holds += 1

    def step(self, record: StepRecord) -> None:
        self.last_step = record
        self.steps += 1
        self._terminating = bool(record.terminate)

    def end_episode(self, episode_id: str) -> None:
        self.ended = True

    def info(self, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        if not self._terminating:
            self.warnings.append(text)

    # ------------------------------------------------------------------ to the simulator

    def take_action(self) -> np.ndarray:
        """The sim action of this control period (x y z deltas, roll pitch yaw 0, gripper); no
        command in the period moves nothing. Actuation noise is added to commanded moves."""
        twist, self._twist = self._twist, None
        delta = np.zeros(3) if twist is None else twist * self._sim_period
        if twist is not None and twist.any() and self._noise > 0 and self._rng is not None:
            delta = delta + self._rng.normal(0.0, self._noise, size=3)
        return np.array([*delta, 0.0, 0.0, 0.0, self._gripper])
