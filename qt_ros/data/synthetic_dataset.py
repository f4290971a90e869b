"""Small synthetic datasets written straight through the dataset writer (tests, benchmarks).

``write_dataset(root, [EpisodeSpec(...), ...])`` appends episodes of random textured frames and
random action bins with the reward given at the last step, in the real on-disk format, so a
test can train on several datasets, outcomes, sources and reward scales in a second. Bags and
``qt-ros convert`` are :mod:`qt_ros.episodes.synthetic`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qt_ros.data.dataset_writer import DatasetWriter
from qt_ros.data.returns import DEFAULT_GAMMA, mc_returns
from qt_ros.qtransformer.tokenizer import ActionTokenizer


@dataclass(frozen=True)
class EpisodeSpec:
    """One synthetic episode: its length, outcome, source and final reward (default: 1 for a
    success, else 0)."""

    length: int = 8
    outcome: str = "success"
    source: str = "autonomous"
    reward: float | None = None
    instruction: str = "pick up the red cube"


def write_dataset(root: str | Path, episodes: list[EpisodeSpec], *,
                  image_size: tuple[int, int] = (32, 32), state_dim: int = 0,
                  tokenizer: ActionTokenizer | None = None, gamma: float = DEFAULT_GAMMA,
                  seed: int = 0) -> Path:
    """Append ``episodes`` to the dataset at ``root`` (created if missing); returns ``root``."""
    tok = tokenizer or ActionTokenizer()
    rng = np.random.default_rng(seed)
    with DatasetWriter(root, image_size=image_size, tokenizer=tok.to_config(),
                       gamma=gamma) as writer:
        start = len(writer.keys)
        for k, spec in enumerate(episodes):
            n = spec.length
            reward = np.zeros(n, np.float32)
            reward[-1] = (float(spec.outcome == "success") if spec.reward is None
                          else spec.reward)
            bins = np.stack([rng.integers(0, b, n) for b in tok.bins], axis=1)
            arrays = {"frames": rng.integers(0, 256, (n, *image_size, 3)).astype(np.uint8),
                      "state": rng.normal(size=(n, state_dim)).astype(np.float32),
                      "action": tok.decode(bins).astype(np.float32),
                      "action_bins": bins.astype(np.int16), "reward": reward,
                      "done": (np.arange(n) == n - 1).astype(np.uint8),
                      "mc_return": mc_returns(reward, gamma).astype(np.float32),
                      "timestamp": np.arange(n, dtype=np.int64) * 100_000_000,
                      "image_age": np.zeros(n, np.float32)}
            key = f"synthetic{start + k}"
            writer.append({"key": key, "episode_id": key, "bag": key,
                           "instruction": spec.instruction, "outcome": spec.outcome,
                           "reward": float(reward[-1]), "source": spec.source, "length": n},
                          arrays)
    return Path(root)
