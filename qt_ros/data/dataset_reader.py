"""Reading the training dataset: tables in memory, per-step fields memory-mapped per shard.

The layout is described in :mod:`qt_ros.data.dataset_format`; :mod:`qt_ros.data.torch_dataset`
builds the learner's items on top of this reader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qt_ros.data.dataset_format import FORMAT, VERSION, DatasetError, read_json


@dataclass
class ShardArrays:
    """Memory-mapped fields of one shard (read-only)."""

    rows: int
    fields: dict[str, np.ndarray]


class DatasetStore:
    """Read a dataset directory: tables in memory, step fields memory-mapped per shard.

    Memory maps are opened lazily and per process (after a fork the child opens its own), so one
    store can be shared with DataLoader workers.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "dataset.json"
        if not meta_path.exists():
            raise DatasetError(f"{self.root} is not a qt_ros dataset (no dataset.json); create one "
                               f"with `qt-ros convert BAG... --out {self.root}`")
        self.meta = read_json(meta_path)
        if self.meta.get("format") != FORMAT:
            raise DatasetError(f"{meta_path} is not a qt_ros dataset description")
        if int(self.meta.get("version", 0)) > VERSION:
            raise DatasetError(f"{self.root} has dataset version {self.meta['version']}; this "
                               f"qt_ros reads up to {VERSION}: upgrade qt_ros")
        self.episodes: list[dict[str, Any]] = (
            read_json(self.root / "episodes.json")["episodes"]
            if (self.root / "episodes.json").exists() else [])
        self.instructions: list[str] = (
            read_json(self.root / "instructions.json")["instructions"]
            if (self.root / "instructions.json").exists() else [])
        self._maps: dict[str, ShardArrays] = {}
        self._pid = os.getpid()

    # -- description --------------------------------------------------------------------------

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.meta["image_size"]
        return int(h), int(w)

    @property
    def state_dim(self) -> int:
        return int(self.meta.get("state_dim") or 0)

    @property
    def tokenizer_config(self) -> dict:
        return dict(self.meta["tokenizer"])

    @property
    def gamma(self) -> float:
        return float(self.meta["gamma"])

    @property
    def num_steps(self) -> int:
        return sum(int(e["length"]) for e in self.episodes)

    def keys(self) -> set[str]:
        """The keys of every episode (what was converted: episode id or bag fingerprint)."""
        return {e["key"] for e in self.episodes}

    def stats(self) -> dict[str, Any]:
        """``stats.json``: per-field statistics and the action bins histogram."""
        path = self.root / "stats.json"
        return read_json(path) if path.exists() else {}

    # -- data ---------------------------------------------------------------------------------

    def shard(self, name: str) -> ShardArrays:
        """The memory-mapped fields of shard ``name`` (opened once per process)."""
        if os.getpid() != self._pid:
            self._maps, self._pid = {}, os.getpid()
        arrays = self._maps.get(name)
        if arrays is None:
            arrays = self._open_shard(name)
            self._maps[name] = arrays
        return arrays

    def episode_field(self, index: int, name: str) -> np.ndarray:
        """One field of one episode (a memory-mapped view, [T, ...])."""
        ep = self.episodes[index]
        rows = self.shard(ep["shard"]).fields[name]
        return rows[ep["start"]:ep["start"] + ep["length"]]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def _open_shard(self, name: str) -> ShardArrays:
        directory = self.root / "shards" / name
        info = read_json(directory / "shard.json")
        rows = int(info["rows"])
        shapes = self.meta["fields"]
        fields = {}
        for field, dtype in self.meta["dtypes"].items():
            path = directory / f"{field}.bin"
            shape = (rows, *shapes[field])
            expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if not path.exists() or path.stat().st_size < expected:
                raise DatasetError(f"{path}: {path.stat().st_size if path.exists() else 0} bytes, "
                                   f"expected at least {expected} ({rows} rows of {field}); the "
                                   f"shard is damaged: reconvert its bags into a new dataset")
            if rows == 0 or expected == 0:
                fields[field] = np.zeros(shape, dtype=dtype)
            else:
                fields[field] = np.memmap(path, dtype=dtype, mode="r", shape=shape)
        return ShardArrays(rows, fields)
