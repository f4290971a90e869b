"""The on-disk training dataset: sharded, memory-mapped, appendable, described by plain files.

Layout (``DATASET/``)::

    dataset.json        format, version, image size (H, W), state size, action tokenizer,
                        gamma of the stored MC returns, and each per-step field's dtype and shape
    episodes.json       one record per episode: key (what was converted: episode id or bag
                        fingerprint), episode id, bag, instruction index, outcome, reward, source,
                        robot, checkpoint, shard and first row, length, dropped steps
    instructions.json   the instruction table (episodes refer to it by index)
    stats.json          per-field statistics (count, mean, std, min, max per dimension) and the
                        histogram of action bins per dimension
    shards/000000/      one directory per shard: <field>.bin (raw little-endian rows, memory-
                        mappable) and shard.json (rows and per-field sums of this shard)

Per-step fields: ``frames`` uint8 [H, W, 3] (RGB), ``state`` float32 [S], ``action`` float32 [d],
``action_bins`` int16 [d], ``reward`` float32, ``done`` uint8, ``mc_return`` float32,
``timestamp`` int64 (bag log time, ns), ``image_age`` float32 (s).

Appending never rewrites existing shards: each ``qt-ros convert`` run writes new shards and then
replaces the small JSON tables atomically, so a crash leaves the previous dataset readable (rows
of an interrupted shard that no episode refers to are ignored). A key already in the dataset is
skipped. A lock file keeps two writers apart.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qt_ros.episodes.catalog import atomic_write_text

FORMAT = "qt_ros-dataset"
VERSION = 1
STEP_FIELDS: dict[str, str] = {  # name -> little-endian dtype
    "frames": "|u1", "state": "<f4", "action": "<f4", "action_bins": "<i2", "reward": "<f4",
    "done": "|u1", "mc_return": "<f4", "timestamp": "<i8", "image_age": "<f4",
}
STAT_FIELDS = ("state", "action", "reward", "mc_return")


class DatasetError(Exception):
    """A dataset that cannot be read or appended to; the text says which and what to do."""


def field_shapes(image_size: tuple[int, int], state_dim: int, num_dims: int) -> dict[str, list]:
    h, w = image_size
    return {"frames": [h, w, 3], "state": [state_dim], "action": [num_dims],
            "action_bins": [num_dims], "reward": [], "done": [], "mc_return": [],
            "timestamp": [], "image_age": []}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} is unreadable ({exc}); it is only ever replaced atomically, "
                           f"so restore it from a backup or convert the bags into a new "
                           f"dataset") from exc


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
        self.meta = _read_json(meta_path)
        if self.meta.get("format") != FORMAT:
            raise DatasetError(f"{meta_path} is not a qt_ros dataset description")
        if int(self.meta.get("version", 0)) > VERSION:
            raise DatasetError(f"{self.root} has dataset version {self.meta['version']}; this "
                               f"qt_ros reads up to {VERSION}: upgrade qt_ros")
        self.episodes: list[dict[str, Any]] = (
            _read_json(self.root / "episodes.json")["episodes"]
            if (self.root / "episodes.json").exists() else [])
        self.instructions: list[str] = (
            _read_json(self.root / "instructions.json")["instructions"]
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
        return {e["key"] for e in self.episodes}

    def stats(self) -> dict[str, Any]:
        path = self.root / "stats.json"
        return _read_json(path) if path.exists() else {}

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
        info = _read_json(directory / "shard.json")
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


class DatasetWriter:
    """Append episodes to a dataset (created if missing); use as a context manager.

    Args:
        root: the dataset directory.
        image_size, tokenizer, gamma: the dataset's; an existing dataset must match them.
        shard_steps: start a new shard after this many rows (~49 kB each at 128x128).
        commit_every: seconds between commits of the tables (and at close).
    """

    def __init__(self, root: str | Path, *, image_size: tuple[int, int], tokenizer: dict,
                 gamma: float, shard_steps: int = 20000, commit_every: float = 5.0) -> None:
        self.root = Path(root)
        self.shard_steps = int(shard_steps)
        self.commit_every = commit_every
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
        return key in self._keys

    @property
    def keys(self) -> frozenset[str]:
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
        self._accumulate(arrays)
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
                          json.dumps(compute_stats(self.root, self.meta), indent=1) + "\n")
        self._dirty = False
        self._last_commit = time.monotonic()

    def close(self) -> None:
        try:
            self.commit()
        finally:
            for f in self._files.values():
                f.close()
            self._files = {}
            self._lock.close()

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

    def _accumulate(self, arrays: dict[str, np.ndarray]) -> None:
        for name in STAT_FIELDS:
            a = np.asarray(arrays[name], dtype=np.float64).reshape(len(arrays[name]), -1)
            s = self._sums.get(name)
            part = {"count": len(a), "sum": a.sum(0).tolist(), "sumsq": (a * a).sum(0).tolist(),
                    "min": a.min(0).tolist() if len(a) else [], "max": a.max(0).tolist()
                    if len(a) else []}
            if s is None:
                self._sums[name] = part
            else:
                s["count"] += part["count"]
                s["sum"] = [x + y for x, y in zip(s["sum"], part["sum"], strict=True)]
                s["sumsq"] = [x + y for x, y in zip(s["sumsq"], part["sumsq"], strict=True)]
                s["min"] = [min(x, y) for x, y in zip(s["min"], part["min"], strict=True)]
                s["max"] = [max(x, y) for x, y in zip(s["max"], part["max"], strict=True)]
        bins = np.asarray(arrays["action_bins"], dtype=np.int64)
        max_bins = max(self.meta["tokenizer"]["bins"])
        hist = np.zeros((bins.shape[1], max_bins), dtype=np.int64)
        for i in range(bins.shape[1]):
            hist[i] = np.bincount(bins[:, i], minlength=max_bins)[:max_bins]
        old = self._sums.get("action_bins_hist")
        self._sums["action_bins_hist"] = (hist + np.asarray(old)).tolist() if old else \
            hist.tolist()


def _shard_infos(root: Path) -> Iterator[tuple[str, dict]]:
    shards = root / "shards"
    if not shards.exists():
        return
    for d in sorted(shards.iterdir()):
        if (d / "shard.json").exists():
            yield d.name, _read_json(d / "shard.json")


def compute_stats(root: Path, meta: dict) -> dict[str, Any]:
    """Combine the shards' sums into dataset statistics (mean/std/min/max per dimension)."""
    total: dict[str, Any] = {}
    hist = None
    for _, info in _shard_infos(root):
        sums = info.get("sums", {})
        for name in STAT_FIELDS:
            s = sums.get(name)
            if not s:
                continue
            t = total.setdefault(name, {"count": 0, "sum": np.zeros(len(s["sum"])),
                                        "sumsq": np.zeros(len(s["sum"])),
                                        "min": np.full(len(s["sum"]), np.inf),
                                        "max": np.full(len(s["sum"]), -np.inf)})
            t["count"] += s["count"]
            t["sum"] += s["sum"]
            t["sumsq"] += s["sumsq"]
            if s["min"]:
                t["min"] = np.minimum(t["min"], s["min"])
                t["max"] = np.maximum(t["max"], s["max"])
        if sums.get("action_bins_hist"):
            h = np.asarray(sums["action_bins_hist"])
            hist = h if hist is None else hist + h
    out: dict[str, Any] = {}
    for name, t in total.items():
        n = max(t["count"], 1)
        mean = t["sum"] / n
        std = np.sqrt(np.maximum(t["sumsq"] / n - mean * mean, 0.0))
        out[name] = {"count": int(t["count"]), "mean": mean.tolist(), "std": std.tolist(),
                     "min": t["min"].tolist(), "max": t["max"].tolist()}
    if hist is not None:
        out["action_bins_histogram"] = hist.tolist()
    return out
