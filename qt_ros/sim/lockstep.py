"""Which commands answer the simulator's latest tick, in lockstep (``sim_robot`` ``lockstep``).

The simulator publishes tick k (image, joint states, state, success flag; one header stamp) and
opens a :class:`Decision` for it. The decision is complete with an arm command stamped at or
after the tick's stamp and, unless the gripper is not part of it, a gripper command:

- The arm command's stamp says which frame it answers: the policy node in lockstep stamps it with
  the stamp of the frame it acted on (exactly the tick's), a commander without frames (the
  scripted demonstrator, a teleop) with its clock when it answers (after the tick). An older
  stamp is the answer to an earlier tick, late: not this decision.
- ``std_msgs/Float64`` has no header, so a gripper command belongs to the arm command next to it:
  the one received just before it (commanders publish the arm first), or, when it comes first,
  the next one. The gripper command right after a late arm command is late too and is dropped.

Without ROS, so the rules are tested on their own; the node turns messages into these calls.
"""

from __future__ import annotations

import numpy as np


class Decision:
    """The commands answering one tick (see the module docstring)."""

    def __init__(self, with_gripper: bool = True):
        self.with_gripper = with_gripper
        self.stamp: int | None = None  # ns, of the tick waited for (None: none published)
        self.velocity: np.ndarray | None = None
        self.gripper: float | None = None
        self._early_gripper: float | None = None
        self._after_late_arm = False
        self.late = 0  # commands dropped as answers to an earlier tick

    def open(self, stamp: int) -> None:
        """A tick stamped ``stamp`` (ns) was published: wait for its answer."""
        self.stamp = stamp
        self.velocity = self.gripper = self._early_gripper = None
        self._after_late_arm = False

    def on_arm(self, stamp: int, velocity: np.ndarray) -> bool:
        """An arm command; returns whether it answers the open tick."""
        if self.stamp is None or stamp < self.stamp:
            self.late += 1
            self._after_late_arm, self._early_gripper = True, None
            return False
        self._after_late_arm = False
        self.velocity = velocity
        if self._early_gripper is not None:
            self.gripper, self._early_gripper = self._early_gripper, None
        return True

    def on_gripper(self, value: float) -> bool:
        """A gripper command; returns whether it is (or will be, with the next arm command) part
        of the decision."""
        if self.stamp is None or self._after_late_arm:
            self.late += 1
            self._after_late_arm = False  # one gripper command goes with one arm command
            return False
        if self.velocity is not None:
            self.gripper = value
        else:
            self._early_gripper = value
        return True

    @property
    def begun(self) -> bool:
        """Part of the answer is in. The simulator then does not re-send the tick: in a recording,
        a frame between the commands of one decision would split it (docs/design.md 4.4)."""
        return self.velocity is not None or self._early_gripper is not None

    @property
    def complete(self) -> bool:
        """The whole decision is in: the tick can be stepped with it."""
        return self.velocity is not None and (self.gripper is not None or not self.with_gripper)
