"""Command safety for the on-robot policy, without ROS: limits, rate limits, freshness, holds.

The policy node converts messages to arrays and asks this module what it may send:

- :class:`SafetyLimits` / :class:`SafetyFilter`: every commanded dimension is clipped to
  ``[lower, upper]`` and then to ``previous +- max_change`` (the largest change from one control
  step to the next). After a hold the previous command is the rest value (zero for deltas and
  velocities, the measured position for absolute targets), so motion ramps up again.
- :func:`non_finite_dims`: a model whose Q values are NaN still returns a *finite* action (the
  arg-max of NaNs is some bin), so both the action and the Q values are checked.
- :class:`Freshness`: when each input was last received, and which are missing or too old.
- :class:`CommandGate`: turns "may I act now?" into at most one hold command per stop and one
  log line per change of reason, instead of one per control tick.
"""

# The safety rules as a whole: docs/design.md, section 5.
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SafetyLimits:
    """Per-dimension bounds of the commands, in the policy's action units.

    Attributes:
        names: the commanded dimensions, e.g. ``("x", "y", "z", "yaw", "gripper")``.
        lower: smallest command of each dimension.
        upper: largest command of each dimension.
        max_change: largest change of each dimension from one control step to the next (> 0).
    """

    names: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    max_change: tuple[float, ...]

    def __post_init__(self) -> None:
        d = len(self.names)
        for label, values in (("lower", self.lower), ("upper", self.upper),
                              ("max_change", self.max_change)):
            if len(values) != d:
                raise ValueError(
                    f"safety limits: '{label}' has {len(values)} values but there are {d} "
                    f"commanded dimensions ({', '.join(self.names)}); give one value per dimension")
        for name, lo, hi, step in zip(self.names, self.lower, self.upper, self.max_change,
                                      strict=True):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"safety limits: dimension '{name}' needs finite lower <= upper, "
                                 f"got lower={lo}, upper={hi}")
            if not step > 0:
                raise ValueError(f"safety limits: dimension '{name}' needs max_change > 0, "
                                 f"got {step}")

    @classmethod
    def create(cls, names: Sequence[str], lower: Sequence[float], upper: Sequence[float],
               max_change: Sequence[float]) -> SafetyLimits:
        return cls(tuple(str(n) for n in names), tuple(float(v) for v in lower),
                   tuple(float(v) for v in upper), tuple(float(v) for v in max_change))


@dataclass
class Filtered:
    """One filtered command: the values to send and which dimensions the filter changed."""

    values: np.ndarray  # float64 [d]
    clipped: list[str] = field(default_factory=list)  # outside [lower, upper]
    rate_limited: list[str] = field(default_factory=list)  # changed by more than max_change


class SafetyFilter:
    """Clips each command to the limits and to ``max_change`` from the previous command."""

    def __init__(self, limits: SafetyLimits):
        self.limits = limits
        self._lower = np.asarray(limits.lower, dtype=np.float64)
        self._upper = np.asarray(limits.upper, dtype=np.float64)
        self._max_change = np.asarray(limits.max_change, dtype=np.float64)
        self._previous = np.full(len(limits.names), np.nan)

    @property
    def previous(self) -> np.ndarray:
        """The last command (NaN where unknown: no rate limit on that dimension's next step)."""
        return self._previous.copy()

    def reset(self, rest: Sequence[float] | np.ndarray) -> None:
        """Start again from ``rest`` (what the robot holds now); NaN entries are unknown."""
        rest = np.asarray(rest, dtype=np.float64)
        if rest.shape != self._previous.shape:
            raise ValueError(f"rest command has shape {rest.shape}, expected "
                             f"{self._previous.shape} ({', '.join(self.limits.names)})")
        self._previous = rest.copy()

    def apply(self, values: Sequence[float] | np.ndarray) -> Filtered:
        """Limit ``values`` (float [d]) and remember the result as the previous command.

        Limits come first, then the rate limit: when the previous command lies further than
        ``max_change`` outside the limits (an absolute target starting from a measured position
        beyond them), the command moves ``max_change`` towards the limits instead of jumping.
        """
        v = np.asarray(values, dtype=np.float64)
        if v.shape != self._previous.shape:
            raise ValueError(f"command has shape {v.shape}, expected {self._previous.shape} "
                             f"({', '.join(self.limits.names)})")
        bad = non_finite_dims(self.limits.names, v)
        if bad:
            raise ValueError(f"non-finite command in dimension(s) {', '.join(bad)}")
        names = self.limits.names
        out = np.clip(v, self._lower, self._upper)
        clipped = [names[i] for i in np.flatnonzero(out != v)]
        known = np.isfinite(self._previous)
        low = np.where(known, self._previous - self._max_change, -np.inf)
        high = np.where(known, self._previous + self._max_change, np.inf)
        limited = np.clip(out, low, high)
        rate_limited = [names[i] for i in np.flatnonzero(limited != out)]
        self._previous = limited.copy()
        return Filtered(limited, clipped, rate_limited)


def non_finite_dims(names: Sequence[str],
                    *arrays: np.ndarray | Sequence[float] | None) -> list[str]:
    """Names of the dimensions where any of ``arrays`` (each [d] or None) is NaN or infinite."""
    bad: set[int] = set()
    for a in arrays:
        if a is None:
            continue
        a = np.asarray(a, dtype=np.float64).reshape(-1)
        bad.update(int(i) for i in np.flatnonzero(~np.isfinite(a)))
    return [names[i] if i < len(names) else f"#{i}" for i in sorted(bad)]


@dataclass
class _Input:
    timeout: float  # seconds; <= 0: never too old once received
    missing: str  # reason while nothing was received
    received: float | None = None


class Freshness:
    """When each named input was last received (monotonic seconds) and which are too old."""

    def __init__(self) -> None:
        self._inputs: dict[str, _Input] = {}

    def watch(self, name: str, timeout: float, missing: str | None = None) -> None:
        """Track ``name``; ``timeout`` <= 0 means it never expires once received."""
        self._inputs[name] = _Input(float(timeout), missing or f"waiting for the first {name}")

    def mark(self, name: str, now: float) -> None:
        self._inputs[name].received = now

    def clear(self, name: str) -> None:
        self._inputs[name].received = None

    def age(self, name: str, now: float) -> float | None:
        received = self._inputs[name].received
        return None if received is None else now - received

    def problems(self, now: float) -> list[str]:
        """One reason per input that is missing or older than its timeout, in watch order."""
        out = []
        for name, inp in self._inputs.items():
            if inp.received is None:
                out.append(inp.missing)
            elif inp.timeout > 0 and now - inp.received > inp.timeout:
                # Stable text (no age in it): the gate logs once per distinct reason.
                out.append(f"no {name} for more than {inp.timeout:g} s")
        return out


@dataclass
class GateChange:
    """What the node must do when the gate changes: publish a hold, log a line."""

    hold: bool = False
    log: str | None = None


class CommandGate:
    """Whether commands are flowing, so that a stop sends one hold command and logs once.

    ``block(reason)`` is called on every tick (or step) that may not command; only the first
    call after a command asks for a hold, and only a change of reason asks for a log line.
    ``commanded()`` is called after each command; it logs when commands resume.
    """

    def __init__(self) -> None:
        self.moving = False  # a command was sent since the last hold
        self.reason: str | None = None  # why commands are stopped (None: flowing or never sent)

    def block(self, reason: str) -> GateChange:
        change = GateChange(hold=self.moving)
        if reason != self.reason:
            prefix = "holding: " if self.moving else "not commanding: "
            change.log = prefix + reason
        self.moving = False
        self.reason = reason
        return change

    def commanded(self) -> GateChange:
        change = GateChange()
        if self.reason is not None:
            change.log = f"commanding (was: {self.reason})"
        self.moving = True
        self.reason = None
        return change
