"""Damaged bags (``qt-ros bench faults --only bags``): flipped bytes in MCAP chunk data, through
``qt-ros convert`` and ``qt-ros repair --check``.

One small episode bag is recorded with the recorder core (:mod:`qt_ros.episodes.synthetic`) and
converted once; then each of K copies gets one byte of its chunk data XOR-ed with a random
non-zero value (seeded: the same copies every run) and goes through both verbs, in-process, as a
user would run them. A copy counts as detected by convert when convert exits non-zero naming it
(and adds nothing to the dataset); by repair when ``repair --check`` exits non-zero. "Converted
silently" is a copy convert took with exit 0; "differ" counts those whose steps (frames, actions,
states) differ from the intact bag's: damage that would have reached training.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_COPIES = 24


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bag-copies", type=int, default=DEFAULT_COPIES,
                        help="damaged copies of the bag (one flipped byte each)")


def chunk_data_ranges(mcap_file: Path) -> list[tuple[int, int]]:
    """``(start, end)`` file offsets of the records inside each chunk of a complete MCAP file
    (the chunk's payload, after its header fields)."""
    from mcap.reader import make_reader

    with open(mcap_file, "rb") as f:
        summary = make_reader(f).get_summary()
        ranges = []
        for index in summary.chunk_indexes:
            f.seek(index.chunk_start_offset + 1 + 8 + 8 + 8 + 8 + 4)  # opcode, length, times,
            (name_len,) = struct.unpack("<I", f.read(4))           # size, crc; compression
            start = index.chunk_start_offset + 1 + 8 + 24 + 4 + 4 + name_len + 8
            ranges.append((start, index.chunk_start_offset + index.chunk_length))
    return ranges


def flip_byte(bag: Path, rng: np.random.Generator) -> int:
    """XOR one byte of chunk data of ``bag``'s MCAP file with a random non-zero value; returns
    its offset."""
    mcap_file = next(bag.glob("*.mcap"))
    ranges = chunk_data_ranges(mcap_file)
    sizes = np.asarray([end - start for start, end in ranges])
    which = int(rng.choice(len(ranges), p=sizes / sizes.sum()))
    offset = int(rng.integers(ranges[which][0], ranges[which][1]))
    with open(mcap_file, "r+b") as f:
        f.seek(offset)
        value = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([value ^ int(rng.integers(1, 256))]))
    return offset


def _verb(argv: list[str]) -> tuple[int, str]:
    """Run one ``qt-ros`` verb in this process; (exit status, stdout + stderr)."""
    from qt_ros.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            status = main(argv)
        except SystemExit as exc:
            status = int(exc.code or 0)
    return status, out.getvalue()


def _steps(bag: Path) -> dict[str, np.ndarray] | None:
    from qt_ros.data.episode_conversion import ConvertedEpisode, ConvertOptions, convert_bag

    try:
        result = convert_bag(bag, ConvertOptions(image_size=(16, 16)))
    except Exception:  # noqa: BLE001 - a copy the converter refuses has no steps
        return None
    if not isinstance(result, ConvertedEpisode):
        return None
    return {k: result.arrays[k] for k in ("frames", "action", "action_bins", "state")}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray] | None) -> bool:
    return b is not None and all(a[k].shape == b[k].shape and np.array_equal(a[k], b[k])
                                 for k in a)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Record a bag, damage K copies, run convert and repair --check on each; the counts."""
    from qt_ros.episodes.synthetic import write_episode

    copies = int(getattr(args, "bag_copies", DEFAULT_COPIES))
    rng = np.random.default_rng(int(getattr(args, "seed", 0)))
    started = time.perf_counter()
    counts = {"bags": copies, "damaged": 0, "detected_by_convert": 0,
              "detected_by_repair_check": 0, "converted_silently": 0,
              "converted_silently_differ": 0}
    with tempfile.TemporaryDirectory(prefix="qt_ros_bag_faults_") as tmp:
        root = Path(tmp)
        truth = write_episode(root / "intact", "faults-0", steps=12, image_size=(16, 20),
                              state_dim=3, pattern="texture")
        intact = _steps(truth["bag"])
        assert intact is not None, "the intact bag does not convert"
        for k in range(copies):
            bag = root / "damaged" / f"copy-{k:02d}" / "faults-0"
            shutil.copytree(truth["bag"], bag)
            flip_byte(bag, rng)
            counts["damaged"] += 1
            status, text = _verb(["convert", str(bag), "--out", str(root / f"dataset-{k}"),
                                  "--workers", "1", "--quiet", "--image-size", "16"])
            if status != 0 and "FAILED" in text:
                counts["detected_by_convert"] += 1
            elif status == 0:
                counts["converted_silently"] += 1
                counts["converted_silently_differ"] += not _same(intact, _steps(bag))
            status, _ = _verb(["repair", "--check", str(bag)])
            counts["detected_by_repair_check"] += status != 0
    counts["seconds"] = round(time.perf_counter() - started, 2)
    return counts
