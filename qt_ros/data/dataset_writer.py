"""Appending episodes to the training dataset (created if missing), crash-safe.

The layout is described in :mod:`qt_ros.data.dataset_format`. Step fields are appended to the
newest shard's ``.bin`` files; the JSON tables (and each shard's ``shard.json`` with its
statistics sums) are replaced atomically at every commit, so readers and a crash only ever see
committed episodes.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from qt_ros.common.files import atomic_write_text
from qt_ros.data.dataset_format import FORMAT, STEP_FIELDS, VERSION, DatasetError, field_shapes
from qt_ros.data.dataset_reader import DatasetStore
from qt_ros.data.dataset_stats import compute_stats, episode_sums, merge_sums

DEFAULT_SHARD_STEPS = 20000


class DatasetWriter:
    """Append episodes to a dataset (created if missing); use as a context manager.

    Args:
        root: the dataset directory.
        image_size, tokenizer, gamma: the dataset's; an existing dataset must match them.
        shard_steps: start a new shard after this many rows (~49 kB each at 128x128).
        commit_every: seconds between commits of the tables (and at close).
    """

    def __init__(self, root: str | Path, *, image_size: tuple[int, int], tokenizer: dict,
                 gamma: float, shard_steps: int = DEFAULT_SHARD_STEPS,
                 commit_every: float = 5.0) -> None:
        self.root = Path(root)
        self.shard_steps = int(shard_steps)
        self.commit_every = commit_every
        self._made_root = not self.root.exists()
        self.created = not (self.root / "dataset.json").exists()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / ".lock", "a")  # noqa: SIM115 - closed in close()
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise DatasetError(f"{self.root} is being written by another process (qt-ros "
                               f"convert); wait for it to finish") from None
        try:
            self._open(image_size, tokenizer, gamma)
        except BaseException:
            self._lock.close()
            raise
        self._shard: str | None = None
        self._files: dict[str, Any] = {}
        self._rows = 0
        self._sums: dict[str, Any] = {}
        self._dirty = False
        self._last_commit = time.monotonic()

    def _open(self, image_size: tuple[int, int], tokenizer: dict, gamma: float) -> None:
        meta_path = self.root / "dataset.json"
        if meta_path.exists():
            store = DatasetStore(self.root)
            meta = store.meta
            problems = []
            if tuple(meta["image_size"]) != tuple(image_size):
                problems.append(f"image size {tuple(meta['image_size'])} (asked {image_size})")
            if meta["tokenizer"] != tokenizer:
                problems.append("action tokenizer")
            if abs(float(meta["gamma"]) - gamma) > 1e-12:
                problems.append(f"gamma {meta['gamma']} (asked {gamma})")
            if problems:
                raise DatasetError(f"{self.root} was created with a different "
                                   f"{', '.join(problems)}; convert into a new dataset or use "
                                   f"the same options")
            self.meta = meta
            self.episodes = store.episodes
            self.instructions = store.instructions
        else:
            self.meta = {"format": FORMAT, "version": VERSION, "image_size": list(image_size),
                         "state_dim": None, "tokenizer": tokenizer, "gamma": gamma,
                         "dtypes": dict(STEP_FIELDS), "fields": None,
                         "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self.episodes, self.instructions = [], []
            (self.root / "shards").mkdir(exist_ok=True)
            atomic_write_text(meta_path, json.dumps(self.meta, indent=1) + "\n")
        self._keys = {e["key"] for e in self.episodes}

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, key: str) -> bool:
        """Whether an episode with this key is in the dataset."""
        return key in self._keys

    @property
    def keys(self) -> frozenset[str]:
        """The keys of every episode in the dataset."""
        return frozenset(self._keys)

    def append(self, record: dict[str, Any], arrays: dict[str, np.ndarray]) -> int | None:
        """Add one episode; returns its index, or None if its key is already in the dataset.

        Raises :class:`DatasetError` if its fields do not fit the dataset (e.g. state size)."""
        if record["key"] in self._keys:
            return None
        n = int(record["length"])
        state_dim = int(arrays["state"].shape[1])
        if self.meta["state_dim"] is None:
            self.meta["state_dim"] = state_dim
            tok = self.meta["tokenizer"]
            self.meta["fields"] = field_shapes(tuple(self.meta["image_size"]), state_dim,
                                               len(tok["names"]))
            atomic_write_text(self.root / "dataset.json", json.dumps(self.meta, indent=1) + "\n")
        elif state_dim != self.meta["state_dim"]:
            raise DatasetError(f"episode from {record['bag']} has a state of {state_dim} values, "
                               f"the dataset {self.meta['state_dim']}; convert it into another "
                               f"dataset or fix the state mapping")
        shapes = self.meta["fields"]
        for name in STEP_FIELDS:
            a = arrays[name]
            if a.shape != (n, *shapes[name]):
                raise DatasetError(f"episode from {record['bag']}: field {name} has shape "
                                   f"{a.shape}, expected {(n, *shapes[name])}")
        if self._shard is None or self._rows >= self.shard_steps:
            self._new_shard()
        for name, dtype in STEP_FIELDS.items():
            np.ascontiguousarray(arrays[name], dtype=np.dtype(dtype)).tofile(self._files[name])
        self._sums = merge_sums(self._sums, episode_sums(
            arrays, max(self.meta["tokenizer"]["bins"])))
        instruction = record["instruction"]
        if instruction not in self.instructions:
            self.instructions.append(instruction)
        entry = {"index": len(self.episodes), **record,
                 "instruction": self.instructions.index(instruction),
                 "shard": self._shard, "start": self._rows}
        self._rows += n
        self.episodes.append(entry)
        self._keys.add(record["key"])
        self._dirty = True
        if time.monotonic() - self._last_commit >= self.commit_every:
            self.commit()
        return entry["index"]

    def commit(self) -> None:
        """Make everything appended so far durable and visible to readers."""
        if not self._dirty:
            return
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        if self._shard is not None:
            atomic_write_text(self.root / "shards" / self._shard / "shard.json",
                              json.dumps({"rows": self._rows, "sums": self._sums}) + "\n")
        atomic_write_text(self.root / "instructions.json",
                          json.dumps({"instructions": self.instructions}, indent=1) + "\n")
        atomic_write_text(self.root / "episodes.json",
                          json.dumps({"episodes": self.episodes}, indent=1) + "\n")
        atomic_write_text(self.root / "stats.json",
                          json.dumps(compute_stats(self.root), indent=1) + "\n")
        self._dirty = False
        self._last_commit = time.monotonic()

    def close(self) -> None:
        """Commit, close the shard files and release the dataset's lock."""
        try:
            self.commit()
        finally:
            for f in self._files.values():
                f.close()
            self._files = {}
            self._lock.close()

    def discard_if_empty(self) -> bool:
        """After ``close``: remove a dataset this writer created if no episode went in (its
        directory too, when the writer made it), so a failed conversion leaves nothing behind.
        Returns whether it was removed."""
        if not self.created or self.episodes:
            return False
        for name in ("dataset.json", "episodes.json", "instructions.json", "stats.json", ".lock"):
            (self.root / name).unlink(missing_ok=True)
        shutil.rmtree(self.root / "shards", ignore_errors=True)
        if self._made_root:
            shutil.rmtree(self.root, ignore_errors=True)
        return True

    def _new_shard(self) -> None:
        if self._shard is not None:
            self.commit()
            for f in self._files.values():
                f.close()
        shards = self.root / "shards"
        existing = [int(p.name) for p in shards.iterdir() if p.name.isdigit()]
        self._shard = f"{max(existing, default=-1) + 1:06d}"
        (shards / self._shard).mkdir()
        self._files = {name: open(shards / self._shard / f"{name}.bin", "ab")  # noqa: SIM115
                       for name in STEP_FIELDS}
        self._rows = 0
        self._sums = {}
