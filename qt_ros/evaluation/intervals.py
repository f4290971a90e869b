"""Confidence intervals of a success rate measured on a few episodes.

With 20 or 30 episodes a success rate alone says little: 6/30 and 12/30 can come from the same
policy. The Wilson score interval is the usual choice for a binomial proportion on small
samples: unlike the normal approximation it stays inside [0, 1] and is not empty at 0/n or n/n.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval (low, high) of the success probability after ``successes`` of
    ``trials`` (default: 95 %)."""
    if trials <= 0:
        raise ValueError(f"a success rate needs at least one trial, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    # Clamp rounding at the ends: 0/n starts at exactly 0, n/n ends at exactly 1.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high
