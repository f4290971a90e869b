"""Dataset statistics: per-field sums kept per shard, combined into ``stats.json``.

One representation, the sums (JSON-ready, as stored in each ``shard.json``)::

    {field: {"count": N, "sum": [..], "sumsq": [..], "min": [..], "max": [..]},  # per dimension
     "action_bins_hist": [[steps per bin] per action dimension]}

The writer adds each episode's sums to its shard's (:func:`merge_sums`), and the dataset's
statistics merge every shard's sums the same way before turning them into mean and standard
deviation (:func:`compute_stats`). Sums, not means, so that shards written by different runs
combine exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qt_ros.data.dataset_format import read_json

STAT_FIELDS = ("state", "action", "reward", "mc_return")
HISTOGRAM = "action_bins_hist"  # the sums' key; stats.json calls it "action_bins_histogram"


def episode_sums(arrays: Mapping[str, np.ndarray], max_bins: int) -> dict[str, Any]:
    """The sums of one episode's steps (``arrays``: its per-step fields, [T, ...]) and the
    histogram of its action bins over ``max_bins`` bins."""
    sums: dict[str, Any] = {}
    for name in STAT_FIELDS:
        a = np.asarray(arrays[name], dtype=np.float64).reshape(len(arrays[name]), -1)
        sums[name] = {"count": len(a), "sum": a.sum(0).tolist(), "sumsq": (a * a).sum(0).tolist(),
                      "min": a.min(0).tolist() if len(a) else [],
                      "max": a.max(0).tolist() if len(a) else []}
    bins = np.asarray(arrays["action_bins"], dtype=np.int64)
    hist = np.zeros((bins.shape[1], max_bins), dtype=np.int64)
    for i in range(bins.shape[1]):
        hist[i] = np.bincount(bins[:, i], minlength=max_bins)[:max_bins]
    sums[HISTOGRAM] = hist.tolist()
    return sums


def merge_sums(total: Mapping[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    """``total`` and ``part`` combined (both sums as above; either may be empty)."""
    out = dict(total)
    for name in STAT_FIELDS:
        p = part.get(name)
        if not p:
            continue
        t = out.get(name)
        if t is None:
            out[name] = {key: list(v) if isinstance(v, list) else v for key, v in p.items()}
            continue
        out[name] = {"count": t["count"] + p["count"],
                     "sum": [x + y for x, y in zip(t["sum"], p["sum"], strict=True)],
                     "sumsq": [x + y for x, y in zip(t["sumsq"], p["sumsq"], strict=True)],
                     "min": _elementwise(min, t["min"], p["min"]),
                     "max": _elementwise(max, t["max"], p["max"])}
    if part.get(HISTOGRAM):
        old = out.get(HISTOGRAM)
        out[HISTOGRAM] = (np.asarray(part[HISTOGRAM]) + np.asarray(old)).tolist() if old else \
            [list(row) for row in part[HISTOGRAM]]
    return out


def _elementwise(pick, a: list, b: list) -> list:
    # an empty list is a field of no rows: nothing to compare with
    if not a or not b:
        return list(a or b)
    return [pick(x, y) for x, y in zip(a, b, strict=True)]


def stats_from_sums(sums: Mapping[str, Any]) -> dict[str, Any]:
    """Sums -> the ``stats.json`` statistics: count, mean, std, min, max per dimension of each
    field, and the action bins histogram."""
    out: dict[str, Any] = {}
    for name in STAT_FIELDS:
        s = sums.get(name)
        if not s:
            continue
        n = max(s["count"], 1)
        mean = np.asarray(s["sum"], dtype=np.float64) / n
        std = np.sqrt(np.maximum(np.asarray(s["sumsq"], dtype=np.float64) / n - mean * mean,
                                 0.0))
        out[name] = {"count": int(s["count"]), "mean": mean.tolist(), "std": std.tolist(),
                     "min": [float(v) for v in s["min"]], "max": [float(v) for v in s["max"]]}
    if sums.get(HISTOGRAM):
        out["action_bins_histogram"] = [list(row) for row in sums[HISTOGRAM]]
    return out


def shard_infos(root: Path) -> Iterator[tuple[str, dict]]:
    """``(name, shard.json)`` of every shard of the dataset at ``root``, in name order."""
    shards = root / "shards"
    if not shards.exists():
        return
    for d in sorted(shards.iterdir()):
        if (d / "shard.json").exists():
            yield d.name, read_json(d / "shard.json")


def compute_stats(*roots: Path) -> dict[str, Any]:
    """The dataset's statistics (``stats.json``): every shard's sums merged; given several
    dataset roots, the statistics of all their steps together."""
    total: dict[str, Any] = {}
    for root in roots:
        for _, info in shard_infos(Path(root)):
            total = merge_sums(total, info.get("sums", {}))
    return stats_from_sums(total)
