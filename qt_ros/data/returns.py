"""Returns under the sparse reward: the discount and the Monte Carlo return-to-go.

``DEFAULT_GAMMA`` is the one default discount of the package: conversion stores the Monte Carlo
returns computed with it, and training uses the dataset's own gamma unless told otherwise.
"""

from __future__ import annotations

import numpy as np

DEFAULT_GAMMA = 0.98  # the paper's discount


def mc_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Per-step Monte Carlo return-to-go ``sum_{j>=t} gamma^(j-t) r_j`` (float32 [T]).

    The Q-Transformer's lower bound on every target (paper Sec. 3.3), per transition.
    """
    out = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out.astype(np.float32)
