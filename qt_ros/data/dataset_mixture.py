"""Several converted datasets trained on as one, each read in place, in the shares asked for.

``DatasetMixture(roots, weights=...)`` opens every dataset directory where it is (memory maps,
no copy) and numbers their steps one after the other; the datasets must share image size,
state size and action tokenizer. ``sampling_groups`` turns the shares (per dataset, per
episode source, per episode outcome) into groups of steps drawn uniformly within a group, and
``StepBatchSampler`` draws the batches.

A batch is a function of the training step alone: batch ``s`` is drawn from a generator seeded
with ``(seed, s)``, as one global batch of ``batch_size x world`` steps, of which rank ``r`` keeps
slice ``r``. So each rank draws its own part with no communication, a run resumed at step ``s``
continues with exactly the batches the uninterrupted run would have drawn (the sampler's state
is the step), and N processes of batch B see the same samples as one process of batch N x B.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from qt_ros.data.dataset_format import DatasetError
from qt_ros.data.torch_dataset import QTransformerDataset


class DatasetMixture(Dataset):
    """Steps of several datasets (``QTransformerDataset`` each, same keyword arguments).

    Attributes:
        parts: the datasets, in the order given; ``weights``: their sampling shares.
    """

    def __init__(self, roots: Sequence[str | Path], weights: Sequence[float] | None = None,
                 **dataset_kwargs) -> None:
        if not roots:
            raise DatasetError("no dataset given")
        weights = [1.0] * len(roots) if not weights else [float(w) for w in weights]
        if len(weights) != len(roots):
            raise ValueError(f"{len(weights)} weights for {len(roots)} datasets: give one "
                             f"weight per dataset")
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"dataset weights must be >= 0 and not all 0, got {weights}")
        self.roots = [str(r) for r in roots]
        self.weights = weights
        self.parts = [_open(root, dataset_kwargs) for root in roots]
        _check_same_layout(self.parts, self.roots)
        self._offsets = np.cumsum([0] + [len(p) for p in self.parts])

    @classmethod
    def of(cls, dataset: QTransformerDataset | DatasetMixture) -> DatasetMixture:
        """A mixture of one already open dataset (a mixture is returned as it is)."""
        if isinstance(dataset, DatasetMixture):
            return dataset
        mixture = cls.__new__(cls)
        mixture.roots, mixture.weights, mixture.parts = [str(dataset.store.root)], [1.0], [dataset]
        mixture._offsets = np.array([0, len(dataset)])
        return mixture

    # The layout the model is built for: the same in every part.
    @property
    def tokenizer(self):
        return self.parts[0].tokenizer

    @property
    def image_size(self) -> tuple[int, int]:
        return self.parts[0].image_size

    @property
    def state_dim(self) -> int:
        return self.parts[0].state_dim

    @property
    def history(self) -> int:
        return self.parts[0].history

    @property
    def episodes(self) -> list[dict]:
        return [e for p in self.parts for e in p.episodes]

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int):
        part = int(np.searchsorted(self._offsets, index, side="right")) - 1
        if not 0 <= index < len(self):
            raise IndexError(f"step {index} out of range [0, {len(self)})")
        return self.parts[part][index - int(self._offsets[part])]

    def read_batch(self, indices: Sequence[int]) -> dict:
        """Steps ``indices`` as one batch, in the order given (each part reads its own steps
        with ``QTransformerDataset.read_batch``)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"steps {idx.min()}..{idx.max()} out of range [0, {len(self)})")
        parts = self.part_of(idx)
        if (parts == parts[0]).all():
            return self.parts[int(parts[0])].read_batch(idx - self._offsets[parts[0]])
        batch: dict = {}
        for p in np.unique(parts):
            rows = np.flatnonzero(parts == p)
            for key, value in self.parts[int(p)].read_batch(
                    idx[rows] - self._offsets[p]).items():
                if key not in batch:
                    batch[key] = value.new_empty((len(idx), *value.shape[1:]))
                batch[key][torch.from_numpy(rows)] = value
        return batch

    def part_of(self, indices: np.ndarray) -> np.ndarray:
        """Which dataset each global step index belongs to."""
        return np.searchsorted(self._offsets, np.asarray(indices), side="right") - 1

    def state_stats(self) -> tuple[list[float], list[float]]:
        """(mean, std) of the state per dimension over every step of every dataset (each
        step once, whatever the sampling shares), from the shards' sums; ([], []) without a
        state. A dimension that never changes gets std 1 (standardizing leaves it as is)."""
        from qt_ros.data.dataset_stats import compute_stats

        state = compute_stats(*self.roots).get("state") if self.state_dim else None
        if not state or not state["count"]:
            return [], []
        return state["mean"], [s if s > 1e-9 else 1.0 for s in state["std"]]

    def return_range(self) -> tuple[float, float, str]:
        """(lowest, highest) discounted return or n-step reward in the data, and where the
        highest is (for messages)."""
        lows, highs = [], []
        for root, part in zip(self.roots, self.parts, strict=True):
            values = np.concatenate([part._mc, part._nstep])
            lows.append(float(values.min()))
            highs.append((float(values.max()), root))
        high, where = max(highs)
        return min(lows), high, where


def sampling_groups(mixture: DatasetMixture, source: Mapping[str, float] | None = None,
                    outcome: Mapping[str, float] | None = None
                    ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(probability of each group, global step indices of each group).

    A group is the steps of one (dataset, episode source, episode outcome). Dataset k gets
    ``weights[k] / sum(weights)`` of the samples; within it, group (s, o) gets a share
    proportional to ``source[s] * outcome[o]`` (missing keys weigh 1, 0 leaves a group out),
    whatever its size. A dataset whose groups all weigh 0 drops out and the others share its
    part.
    """
    source, outcome = dict(source or {}), dict(outcome or {})
    probs, members = [], []
    for k, part in enumerate(mixture.parts):
        offset = int(mixture._offsets[k])
        steps: dict[tuple[str, str], list[np.ndarray]] = {}
        for e, start, length in zip(part.episodes, part._offsets[:-1], part.lengths, strict=True):
            key = (e.get("source", "autonomous"), e.get("outcome", "unknown"))
            steps.setdefault(key, []).append(np.arange(offset + start, offset + start + length))
        shares = {key: source.get(key[0], 1.0) * outcome.get(key[1], 1.0) for key in steps}
        total = sum(shares.values())
        if total <= 0 or mixture.weights[k] <= 0:
            continue
        for key, indices in steps.items():
            if shares[key] > 0:
                probs.append(mixture.weights[k] * shares[key] / total)
                members.append(np.concatenate(indices))
    if not probs:
        raise ValueError("the sampling weights leave no step to sample")
    p = np.asarray(probs, dtype=np.float64)
    return p / p.sum(), members


class StepBatchSampler(Sampler[list[int]]):
    """Batches of step indices keyed by the training step (see the module docstring).

    Yields the batches of steps ``start`` .. ``stop - 1`` (``stop`` None: without end).
    """

    def __init__(self, groups: tuple[np.ndarray, list[np.ndarray]], batch_size: int, *,
                 seed: int = 0, rank: int = 0, world: int = 1, start: int = 0,
                 stop: int | None = None) -> None:
        probs, members = groups
        self.probs = np.asarray(probs, dtype=np.float64)
        self._flat = np.concatenate(members).astype(np.int64)
        self._sizes = np.asarray([len(m) for m in members], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)[:-1]])
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.start, self.stop = start, stop

    def batch(self, step: int) -> list[int]:
        """The step indices of rank ``rank``'s part of training step ``step``'s batch."""
        rng = np.random.default_rng([int(self.seed), int(step)])
        n = self.batch_size * self.world
        group = rng.choice(len(self.probs), size=n, p=self.probs)
        within = (rng.random(n) * self._sizes[group]).astype(np.int64)
        chosen = self._flat[self._starts[group] + within]
        return chosen[self.rank * self.batch_size:(self.rank + 1) * self.batch_size].tolist()

    def __iter__(self):
        step = self.start
        while self.stop is None or step < self.stop:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("a sampler without end has no length")
        return max(0, self.stop - self.start)


class BatchReads(Dataset):
    """A dataset whose item is a whole batch: ``BatchReads(data)[indices]`` is
    ``data.read_batch(indices)``. A DataLoader over it with ``batch_size=None`` and a batch
    sampler (``StepBatchSampler``) as its ``sampler`` reads each batch with one gather per
    field, in its workers or in the main process, and collates nothing."""

    def __init__(self, data: QTransformerDataset | DatasetMixture) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: Sequence[int]) -> dict:
        return self.data.read_batch(indices)


def _open(root: str | Path, kwargs: dict) -> QTransformerDataset:
    if not Path(root, "dataset.json").is_file():
        what = "does not exist" if not Path(root).exists() else "is not a dataset"
        raise DatasetError(f"dataset {root} {what} (no dataset.json): pass a directory "
                           f"written by `qt-ros convert --out`")
    return QTransformerDataset(root, **kwargs)


def _check_same_layout(parts: list[QTransformerDataset], roots: list[str]) -> None:
    first = parts[0]
    for root, part in zip(roots[1:], parts[1:], strict=True):
        problems = []
        if tuple(part.image_size) != tuple(first.image_size):
            problems.append(f"image size {tuple(part.image_size)} vs {tuple(first.image_size)}")
        if part.state_dim != first.state_dim:
            problems.append(f"state size {part.state_dim} vs {first.state_dim}")
        if part.tokenizer.to_config() != first.tokenizer.to_config():
            problems.append("another action tokenizer (names, bounds or bins)")
        if problems:
            raise DatasetError(f"dataset {root} cannot be trained with {roots[0]}: "
                               + "; ".join(problems) + " (convert both with the same "
                               "--image-size, state and --tokenizer)")
