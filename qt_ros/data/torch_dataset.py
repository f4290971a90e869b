"""The training dataset as a PyTorch ``Dataset``: one item per control step, for the learner.

Item ``t`` of an episode of length ``T`` (the learner's batch is the default collation)::

    frames                 uint8   [w, 3, H, W]  frames t-w+1 .. t (the first frame repeated
                                                 before the episode start)
    instruction_embedding  float32 [E]
    state                  float32 [S]           (S may be 0)
    action_bins            int64   [d]
    reward                 float32 []            sum_{k<n, t+k<T} gamma^k r_{t+k}
    next_frames            uint8   [w, 3, H, W]  history ending at t+n (at T-1 when done)
    next_state             float32 [S]
    done                   float32 []            1 when the episode ends within the n steps
    discount               float32 []            gamma^n, the bootstrap factor
    mc_return              float32 []            sum_{j>=t} gamma^(j-t) r_j

The on-disk layout is :mod:`qt_ros.data.dataset_format`. Steps are read from memory maps opened in
each DataLoader worker, so any number of workers is safe. ``sample_weights`` gives per-step
weights for a ``WeightedRandomSampler`` that draws each (source, outcome) group in chosen shares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from qt_ros.data.dataset_format import DatasetError
from qt_ros.data.dataset_reader import DatasetStore
from qt_ros.data.returns import DEFAULT_GAMMA, mc_returns
from qt_ros.qtransformer.tokenizer import ActionTokenizer

EMBEDDINGS_FILE = "instruction_embeddings.npy"


def save_instruction_embeddings(root: str | Path, embeddings: np.ndarray) -> Path:
    """Store embeddings [num_instructions, E] (rows aligned with instructions.json) next to the
    dataset, where :class:`QTransformerDataset` finds them by default."""
    store = DatasetStore(root)
    e = np.asarray(embeddings, dtype=np.float32)
    if e.ndim != 2 or len(e) != len(store.instructions):
        raise DatasetError(f"embeddings of shape {e.shape} do not match the "
                           f"{len(store.instructions)} instructions of {root}")
    path = Path(root) / EMBEDDINGS_FILE
    np.save(path, e)
    return path


class QTransformerDataset(Dataset):
    """Steps of a converted dataset with frame history, n-step returns and MC returns.

    Args:
        root: the dataset directory (``qt-ros convert --out``).
        history: w, frames per item.
        n_step: n of the n-step return (1 = one-step TD).
        gamma: discount of the n-step and MC returns (the stored MC returns are recomputed if
            the dataset was converted with another gamma).
        instruction_embeddings: an array [num_instructions, E] aligned with
            ``self.instructions``, or a function ``list[str] -> array [N, E]`` (called once), or
            None to load ``DATASET/instruction_embeddings.npy``.
        episodes: indices of the episodes to use (default: all), e.g. a train/validation split.
    """

    def __init__(self, root: str | Path, *, history: int = 1, n_step: int = 1,
                 gamma: float = DEFAULT_GAMMA,
                 instruction_embeddings: np.ndarray | Callable[[list[str]], Any] | None = None,
                 episodes: Sequence[int] | None = None) -> None:
        if history < 1 or n_step < 1:
            raise ValueError(f"history and n_step must be >= 1, got {history}, {n_step}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.store = DatasetStore(root)
        self.history, self.n_step, self.gamma = int(history), int(n_step), float(gamma)
        self.tokenizer = ActionTokenizer.from_config(self.store.tokenizer_config)
        self.instructions = list(self.store.instructions)
        self.embeddings = self._embeddings(instruction_embeddings)
        chosen = list(range(len(self.store.episodes))) if episodes is None else list(episodes)
        self.episodes = [self.store.episodes[i] for i in chosen]
        if not self.episodes:
            raise DatasetError(f"dataset {root} has no episodes to train on: convert episode bags "
                               f"into it first (qt-ros convert BAGS --out {root})")
        lengths = np.asarray([int(e["length"]) for e in self.episodes], dtype=np.int64)
        self.lengths = lengths
        self._offsets = np.concatenate([[0], np.cumsum(lengths)])
        # step -> (position in self.episodes, t)
        self._episode_of = np.repeat(np.arange(len(self.episodes)), lengths).astype(np.int64)
        self._t = (np.arange(self._offsets[-1]) - self._offsets[self._episode_of]).astype(np.int64)
        self._rewards = [np.asarray(self.store.episode_field(i, "reward"), dtype=np.float64)
                         for i in chosen]
        # per episode of self.episodes: its shard's name and first row (for batched reads)
        self._shard_names = sorted({str(e["shard"]) for e in self.episodes})
        self._shard_of = np.asarray([self._shard_names.index(str(e["shard"]))
                                     for e in self.episodes], dtype=np.int64)
        self._start_of = np.asarray([int(e["start"]) for e in self.episodes], dtype=np.int64)
        self._instruction_of = np.asarray([int(e["instruction"]) for e in self.episodes],
                                          dtype=np.int64)
        self._nstep, self._done, self._next_t, self._mc = self._returns()

    # -- description --------------------------------------------------------------------------

    @property
    def image_size(self) -> tuple[int, int]:
        return self.store.image_size

    @property
    def state_dim(self) -> int:
        return self.store.state_dim

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    # -- items --------------------------------------------------------------------------------

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"step {index} out of range [0, {len(self)})")
        return {k: v[0] for k, v in self.read_batch([index]).items()}

    def read_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Items ``indices`` as one batch (what PyTorch's default collation of ``self[i]`` for
        each index gives), read with one gather per field and shard instead of Python work per
        item and field: training reads its batches so (``dataset_mixture.BatchReads``)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"steps {idx.min()}..{idx.max()} out of range [0, {len(self)})")
        k, t, nt = self._episode_of[idx], self._t[idx], self._next_t[idx]
        starts, shards = self._start_of[k], self._shard_of[k]
        w, (h, wd), b = self.history, self.image_size, len(idx)
        frames = np.empty((b, w, 3, h, wd), dtype=np.uint8)
        next_frames = np.empty_like(frames)
        state = np.empty((b, self.state_dim), dtype=np.float32)
        next_state = np.empty_like(state)
        bins = np.empty((b, len(self.tokenizer.bins)), dtype=np.int64)
        window = np.arange(1 - w, 1)
        for s in np.unique(shards):
            rows = np.flatnonzero(shards == s)
            fields = self.store.shard(self._shard_names[s]).fields
            first = starts[rows]
            for out, at in ((frames, t[rows]), (next_frames, nt[rows])):
                hist = np.maximum(at[:, None] + window, 0) + first[:, None]  # [r, w]
                out[rows] = fields["frames"][hist].transpose(0, 1, 4, 2, 3)
            state[rows] = fields["state"][first + t[rows]]
            next_state[rows] = fields["state"][first + nt[rows]]
            bins[rows] = fields["action_bins"][first + t[rows]]
        return {
            "frames": torch.from_numpy(frames),
            "instruction_embedding": torch.from_numpy(self.embeddings[self._instruction_of[k]]),
            "state": torch.from_numpy(state),
            "action_bins": torch.from_numpy(bins),
            "reward": torch.from_numpy(self._nstep[idx]),
            "next_frames": torch.from_numpy(next_frames),
            "next_state": torch.from_numpy(next_state),
            "done": torch.from_numpy(self._done[idx]),
            "discount": torch.full((b,), self.gamma ** self.n_step, dtype=torch.float32),
            "mc_return": torch.from_numpy(self._mc[idx]),
        }

    # -- sampling -----------------------------------------------------------------------------

    def sample_weights(self, source: Mapping[str, float] | None = None,
                       outcome: Mapping[str, float] | None = None) -> torch.Tensor:
        """Per-step weights (float64 [len]) drawing each (source, outcome) group in proportion to
        ``source[s] * outcome[o]`` whatever its size, e.g. ``source={"demonstration": 1,
        "autonomous": 1}`` gives half the samples from each source. Missing keys weigh 1;
        a weight of 0 leaves the group out."""
        source, outcome = dict(source or {}), dict(outcome or {})
        groups = [(e.get("source", "autonomous"), e.get("outcome", "unknown"))
                  for e in self.episodes]
        steps_in: dict[tuple[str, str], int] = {}
        for g, n in zip(groups, self.lengths, strict=True):
            steps_in[g] = steps_in.get(g, 0) + int(n)
        per_episode = np.asarray([source.get(s, 1.0) * outcome.get(o, 1.0) / steps_in[(s, o)]
                                  for s, o in groups], dtype=np.float64)
        if not (per_episode > 0).any():
            raise ValueError("sample weights leave no step to sample")
        return torch.from_numpy(per_episode[self._episode_of])

    def sampler(self, num_samples: int | None = None, source: Mapping[str, float] | None = None,
                outcome: Mapping[str, float] | None = None,
                generator: torch.Generator | None = None) -> WeightedRandomSampler:
        """A ``WeightedRandomSampler`` over ``sample_weights(source, outcome)``."""
        return WeightedRandomSampler(self.sample_weights(source, outcome),
                                     num_samples or len(self), replacement=True,
                                     generator=generator)

    # -- set-up -------------------------------------------------------------------------------

    def _embeddings(self, given) -> np.ndarray:
        if given is None:
            path = self.store.root / EMBEDDINGS_FILE
            if not path.exists():
                raise DatasetError(
                    f"no instruction embeddings for {self.store.root}: pass "
                    f"instruction_embeddings= (an array [{len(self.instructions)}, E] or a "
                    f"function list[str] -> array) or save them with "
                    f"save_instruction_embeddings()")
            given = np.load(path)
        elif callable(given):
            given = given(list(self.instructions))
        e = np.asarray(given.detach().cpu() if isinstance(given, torch.Tensor) else given,
                       dtype=np.float32)
        if e.ndim != 2 or len(e) != len(self.instructions):
            raise DatasetError(f"instruction embeddings of shape {e.shape} do not match the "
                               f"{len(self.instructions)} instructions of the dataset "
                               f"(rebuild them after appending episodes)")
        return np.ascontiguousarray(e)

    def _returns(self) -> tuple[np.ndarray, ...]:
        n, g = self.n_step, self.gamma
        total = len(self)
        nstep = np.zeros(total, dtype=np.float32)
        done = np.zeros(total, dtype=np.float32)
        next_t = np.zeros(total, dtype=np.int64)
        mc = np.zeros(total, dtype=np.float32)
        powers = g ** np.arange(n)
        for k, r in enumerate(self._rewards):
            T = len(r)
            o = int(self._offsets[k])
            padded = np.concatenate([r, np.zeros(n)])
            windows = np.lib.stride_tricks.sliding_window_view(padded, n)[:T]  # [T, n]
            nstep[o:o + T] = windows @ powers
            t = np.arange(T)
            done[o:o + T] = (t + n >= T).astype(np.float32)
            next_t[o:o + T] = np.minimum(t + n, T - 1)
            mc[o:o + T] = mc_returns(r, g)
        return nstep, done, next_t, mc
