"""Action tokenizer: continuous actions <-> per-dimension bins (Q-Transformer, Sec. 3).

Every action dimension i is discretized into ``bins[i]`` evenly spaced values from ``low[i]`` to
``high[i]``, both included: bin k stands for ``low + k * (high - low) / (bins - 1)``. Including
the end points lets a 2-bin dimension mean exactly {low, high} (gripper open/closed, terminate
no/yes) and makes the extreme commands reachable. A continuous value maps to the nearest bin;
values outside the bounds are clipped, and the tokenizer says so (a warning naming the dimension
and how many values), or raises with ``strict=True``.

The tokenizer is saved with every checkpoint and dataset (``to_config`` / ``from_config``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper", "terminate")
# Per-step end-effector deltas (m, rad), gripper position (0 open .. 1 closed), terminate flag.
DEFAULT_LOW = (-0.05, -0.05, -0.05, -0.25, -0.25, -0.25, 0.0, 0.0)
DEFAULT_HIGH = (0.05, 0.05, 0.05, 0.25, 0.25, 0.25, 1.0, 1.0)


@dataclass
class ActionTokenizer:
    """Per-dimension discretization of a continuous action vector.

    Attributes:
        names: one name per action dimension, in the autoregressive order of the Q-Transformer.
        low: lower bound of each dimension (the value of bin 0).
        high: upper bound of each dimension (the value of the last bin).
        bins: number of bins of each dimension (paper: 256; 2 for a binary dimension).
        terminate: name of the dimension meaning "end the episode", or None if there is none.
    """

    names: list[str] = field(default_factory=lambda: list(DEFAULT_NAMES))
    low: list[float] = field(default_factory=lambda: list(DEFAULT_LOW))
    high: list[float] = field(default_factory=lambda: list(DEFAULT_HIGH))
    bins: list[int] = field(default_factory=lambda: [256] * 7 + [2])
    terminate: str | None = "terminate"

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self.low = [float(v) for v in self.low]
        self.high = [float(v) for v in self.high]
        self.bins = [int(b) for b in self.bins]
        d = len(self.names)
        if not (len(self.low) == len(self.high) == len(self.bins) == d) or d == 0:
            raise ValueError(
                f"ActionTokenizer: names, low, high and bins must have the same non-zero length, "
                f"got {d}, {len(self.low)}, {len(self.high)}, {len(self.bins)}")
        if len(set(self.names)) != d:
            raise ValueError(f"ActionTokenizer: dimension names must be unique, got {self.names}")
        for name, lo, hi, b in zip(self.names, self.low, self.high, self.bins, strict=True):
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
                raise ValueError(f"ActionTokenizer: dimension '{name}' needs finite low < high, "
                                 f"got low={lo}, high={hi}")
            if b < 2:
                raise ValueError(f"ActionTokenizer: dimension '{name}' needs >= 2 bins, got {b}")
        if self.terminate is not None and self.terminate not in self.names:
            raise ValueError(f"ActionTokenizer: terminate dimension '{self.terminate}' is not one "
                             f"of {self.names}")
        self._low = np.asarray(self.low, dtype=np.float64)
        self._high = np.asarray(self.high, dtype=np.float64)
        self._bins = np.asarray(self.bins, dtype=np.int64)
        self._step = (self._high - self._low) / (self._bins - 1)

    @classmethod
    def uniform(cls, names: Sequence[str], low: Sequence[float], high: Sequence[float],
                num_bins: int = 256, terminate: str | None = None) -> ActionTokenizer:
        """A tokenizer with the same bin count for every dimension except a 2-bin terminate."""
        bins = [2 if n == terminate else num_bins for n in names]
        return cls(list(names), list(low), list(high), bins, terminate)

    @property
    def num_dims(self) -> int:
        return len(self.names)

    @property
    def max_bins(self) -> int:
        return int(self._bins.max())

    @property
    def terminate_index(self) -> int | None:
        return None if self.terminate is None else self.names.index(self.terminate)

    def valid_mask(self) -> np.ndarray:
        """Bool [num_dims, max_bins]: which bins exist in each dimension (others never chosen)."""
        return np.arange(self.max_bins)[None, :] < self._bins[:, None]

    def bin_values(self, dim: int) -> np.ndarray:
        """The continuous value of every bin of dimension ``dim`` (float64 [bins[dim]])."""
        return self._low[dim] + np.arange(self._bins[dim]) * self._step[dim]

    def encode(self, actions: np.ndarray, *, strict: bool = False,
               source: str = "") -> np.ndarray:
        """Continuous actions [..., num_dims] -> bins int64 [..., num_dims] (nearest bin).

        Out-of-range values are clipped with a warning naming the dimensions, or raise
        ``ValueError`` when ``strict``. Non-finite values always raise. ``source`` (a bag or
        topic name) is included in messages.
        """
        bins, clipped = self.encode_with_report(actions)
        if clipped.any():
            where = f" in {source}" if source else ""
            counts = {self.names[i]: int(c) for i, c in
                      enumerate(clipped.reshape(-1, self.num_dims).sum(0)) if c}
            detail = ", ".join(f"{n}: {c}" for n, c in counts.items())
            msg = (f"action values outside the tokenizer bounds{where} ({detail}); "
                   f"bounds: " + ", ".join(f"{n} [{lo:g}, {hi:g}]" for n, lo, hi in
                                          zip(self.names, self.low, self.high, strict=True)))
            if strict:
                raise ValueError(msg)
            log.warning("%s: clipped to the nearest bound", msg)
        return bins

    def encode_with_report(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like ``encode`` but silent: returns (bins, clipped mask of the same shape)."""
        a = np.asarray(actions, dtype=np.float64)
        if a.shape[-1:] != (self.num_dims,):
            raise ValueError(f"expected actions with last dimension {self.num_dims} "
                             f"({' '.join(self.names)}), got shape {a.shape}")
        if not np.isfinite(a).all():
            bad = sorted({self.names[i] for i in np.argwhere(~np.isfinite(a))[:, -1]})
            raise ValueError(f"non-finite action values in dimension(s) {', '.join(bad)}")
        clipped = (a < self._low) | (a > self._high)
        a = np.clip(a, self._low, self._high)
        bins = np.rint((a - self._low) / self._step).astype(np.int64)
        return np.minimum(bins, self._bins - 1), clipped

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """Bins int [..., num_dims] -> continuous actions float64 [..., num_dims]."""
        b = np.asarray(bins)
        if b.shape[-1:] != (self.num_dims,):
            raise ValueError(f"expected bins with last dimension {self.num_dims}, got {b.shape}")
        if (b < 0).any() or (b >= self._bins).any():
            raise ValueError(f"bin index out of range for bins per dimension {self.bins}: {b}")
        return self._low + b.astype(np.float64) * self._step

    def is_terminate(self, bins: np.ndarray) -> np.ndarray | bool:
        """Whether the terminate dimension chose its last bin ("yes"); False if there is none."""
        if self.terminate_index is None:
            return False
        b = np.asarray(bins)[..., self.terminate_index]
        return b == self._bins[self.terminate_index] - 1

    def to_config(self) -> dict:
        """Plain dict (JSON/YAML-safe) that ``from_config`` turns back into this tokenizer."""
        return {"names": list(self.names), "low": list(self.low), "high": list(self.high),
                "bins": list(self.bins), "terminate": self.terminate}

    @classmethod
    def from_config(cls, config: dict) -> ActionTokenizer:
        unknown = set(config) - {"names", "low", "high", "bins", "terminate"}
        if unknown:
            raise ValueError(f"unknown action tokenizer field(s): {sorted(unknown)}")
        return cls(**config)
