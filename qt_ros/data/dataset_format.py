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

The reader is :mod:`qt_ros.data.dataset_reader`, the writer :mod:`qt_ros.data.dataset_writer`, the
statistics :mod:`qt_ros.data.dataset_stats`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMAT = "qt_ros-dataset"
VERSION = 1
STEP_FIELDS: dict[str, str] = {  # name -> little-endian dtype
    "frames": "|u1", "state": "<f4", "action": "<f4", "action_bins": "<i2", "reward": "<f4",
    "done": "|u1", "mc_return": "<f4", "timestamp": "<i8", "image_age": "<f4",
}


class DatasetError(Exception):
    """A dataset that cannot be read or appended to; the text says which and what to do."""


def field_shapes(image_size: tuple[int, int], state_dim: int, num_dims: int) -> dict[str, list]:
    """The shape of one row of every per-step field (``dataset.json``'s ``fields``)."""
    h, w = image_size
    return {"frames": [h, w, 3], "state": [state_dim], "action": [num_dims],
            "action_bins": [num_dims], "reward": [], "done": [], "mc_return": [],
            "timestamp": [], "image_age": []}


def read_json(path: Path) -> Any:
    """One of the dataset's JSON files; raises :class:`DatasetError` saying what to do."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} is unreadable ({exc}); it is only ever replaced atomically, "
                           f"so restore it from a backup or convert the bags into a new "
                           f"dataset") from exc
