"""``qt-ros convert BAG... --out DATASET``: episode bags -> the training dataset.

Reads qt_ros episode bags (``recorder_node``; complete, or incomplete after a crash) and plain
``ros2 bag record`` bags (MCAP or sqlite3) described by a topic mapping (``--mapping``, see
:mod:`qt_ros.data.topic_mapping`). Each bag is converted in a worker process
(:mod:`qt_ros.data.bag_conversion`, :mod:`qt_ros.data.episode_conversion`) and appended to the
dataset (:mod:`qt_ros.data.dataset_writer`); bags already in the dataset are skipped. A bag that
cannot be converted (damaged bytes found by its CRCs, corrupt, truncated, empty, a missing topic,
images in an unknown encoding) is reported with the reason and skipped; the others are converted.
A policy episode that ended before its first state has its steps dropped (counted, ``no_state``);
a bag whose state topic stayed silent waits, in a new dataset, until another bag has set the
dataset's state size (or converts with none if no bag has one). A run that converts nothing into
a new dataset leaves no dataset directory behind.

Exit status: 0 when every bag was converted or skipped as already converted, 1 when some failed,
2 when nothing could be done (bad options, mapping or dataset).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from qt_ros.data.bag_conversion import BagResult, convert_bags, load_tokenizer_config
from qt_ros.data.conversion_results import (
    DEFAULT_IMAGE_SIZE,
    ConvertedEpisode,
    ConvertOptions,
    Deferred,
    NoSteps,
    Skipped,
)
from qt_ros.data.dataset_format import DatasetError
from qt_ros.data.dataset_reader import DatasetStore
from qt_ros.data.dataset_writer import DEFAULT_SHARD_STEPS, DatasetWriter
from qt_ros.data.returns import DEFAULT_GAMMA
from qt_ros.data.topic_mapping import MappingError, TopicMapping
from qt_ros.episodes.bag_metadata import find_bags
from qt_ros.qtransformer.tokenizer import ActionTokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", metavar="BAG",
                        help="bag directories, or directories holding bags (a record_dir)")
    parser.add_argument("--out", required=True, metavar="DATASET",
                        help="dataset directory (created, or appended to)")
    parser.add_argument("--mapping", metavar="YAML",
                        help="topic mapping for bags not written by recorder_node")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="parallel conversion processes (default: min(4, cores))")
    parser.add_argument("--image-size", metavar="HxW",
                        help="training resolution, e.g. 128 or 96x128 (default: the dataset's, "
                             "else 128x128)")
    parser.add_argument("--max-image-age", type=float, metavar="S",
                        help="drop steps whose latest image is older (default: mapping's, 0.2)")
    parser.add_argument("--rate", type=float, metavar="HZ",
                        help="fixed control rate for mapped bags without a step topic")
    parser.add_argument("--gamma", type=float,
                        help=f"discount of the stored MC returns (default: the dataset's, else "
                             f"{DEFAULT_GAMMA})")
    parser.add_argument("--tokenizer", metavar="JSON",
                        help="action tokenizer: a JSON file of ActionTokenizer.to_config(), or "
                             "a checkpoint directory / config.json (default: the dataset's, else "
                             "the default tokenizer)")
    parser.add_argument("--shard-steps", type=int, default=DEFAULT_SHARD_STEPS,
                        help="rows per shard before a new one starts")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Convert the bags into the dataset and print a summary; returns the exit status."""
    try:
        options = _options(args)
    except (MappingError, DatasetError, ValueError, OSError) as exc:
        print(f"qt-ros convert: {exc}", file=sys.stderr)
        return 2
    bags = find_bags(args.bags)
    try:
        writer = DatasetWriter(args.out, image_size=options.image_size,
                               tokenizer=options.tokenizer, gamma=options.gamma,
                               shard_steps=args.shard_steps)
    except (DatasetError, OSError) as exc:
        print(f"qt-ros convert: {exc}", file=sys.stderr)
        return 2
    summary = Summary()
    started = time.perf_counter()
    with writer:
        converted = {e["key"]: e.get("outcome") for e in writer.episodes}
        bar = tqdm(total=len(bags), unit="bag", desc="convert", file=sys.stderr,
                   disable=args.quiet, dynamic_ncols=True)
        deferred: list[Path] = []
        for bag, result in convert_bags(bags, options, writer.keys, args.workers):
            if isinstance(result, Deferred):
                deferred.append(Path(bag))
            else:
                summary.add(bag, result, writer, converted)
                bar.update(1)
            bar.set_postfix(steps=summary.steps, failed=len(summary.failed))
        # Bags whose state topic stayed silent, now that the dataset's state size is known
        # (none when no bag had a state).
        later = replace(options, state_dim=writer.meta["state_dim"] or 0)
        for bag, result in convert_bags(deferred, later, writer.keys, args.workers):
            summary.add(bag, result, writer, converted)
            bar.update(1)
        bar.close()
    summary.seconds = time.perf_counter() - started
    if writer.discard_if_empty():
        print(summary.text(args.out, 0, 0, kept=False))
    else:
        store = DatasetStore(args.out)
        print(summary.text(args.out, len(store.episodes), store.num_steps))
    return 1 if summary.failed else 0


class Summary:
    """What a conversion run did, bag by bag, for the report printed at the end."""

    def __init__(self) -> None:
        self.converted: list[str] = []
        self.skipped: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.warnings: list[tuple[str, str]] = []
        self.no_steps: list[tuple[str, dict[str, int]]] = []
        self.steps = 0
        self.dropped: Counter[str] = Counter()
        self.seconds = 0.0

    def add(self, bag: str, result: BagResult, writer: DatasetWriter,
            converted: dict[str, str | None]) -> None:
        """Append one bag's result to the dataset (if it has steps) and count it."""
        if isinstance(result, ConvertedEpisode):
            try:
                index = writer.append(result.record, result.arrays)
            except DatasetError as exc:
                self.failed.append((bag, str(exc)))
                return
            if index is None:
                self.skipped.append(bag)
                return
            self.converted.append(bag)
            self.steps += result.record["length"]
            self.dropped.update(result.record["dropped"])
            self.warnings += [(bag, w) for w in result.warnings]
        elif isinstance(result, NoSteps):
            self.no_steps.append((bag, result.dropped))
            self.dropped.update(result.dropped)
        elif isinstance(result, Skipped):
            self.skipped.append(bag)
            old = converted.get(result.key)
            if result.outcome and old and result.outcome != old:
                self.warnings.append((bag, f"relabelled {result.outcome} after its conversion "
                                           f"({old} in the dataset); convert into a new dataset "
                                           f"to use the new label"))
        else:
            self.failed.append((bag, str(result)))

    def text(self, out: str, episodes: int, steps: int, kept: bool = True) -> str:
        """The report: counts, every failure and warning, and what the dataset now holds."""
        dropped = sum(self.dropped.values())
        reasons = f": {dict(self.dropped)}" if dropped else ""
        lines = [f"converted {len(self.converted)} bag(s) ({self.steps} steps, {dropped} "
                 f"dropped{reasons}) in {self.seconds:.2f} s; skipped {len(self.skipped)} "
                 f"already converted; {len(self.no_steps)} without a usable step; failed "
                 f"{len(self.failed)}"]
        for bag, why in self.failed:
            lines.append(f"  FAILED {bag}: {why}")
        for bag, counts in self.no_steps:
            lines.append(f"  no steps {bag}: every step dropped ({counts}; no_state: the "
                         f"episode ended before its first state message)")
        for bag, why in self.warnings:
            lines.append(f"  warning {bag}: {why}")
        lines.append(f"dataset {out}: {episodes} episode(s), {steps} step(s)" if kept else
                     f"dataset {out}: not created (no episode converted)")
        return "\n".join(lines)


def _options(args: argparse.Namespace) -> ConvertOptions:
    existing = DatasetStore(args.out) if (Path(args.out) / "dataset.json").exists() else None
    if args.image_size:
        image_size = parse_image_size(args.image_size)
    else:
        image_size = existing.image_size if existing else DEFAULT_IMAGE_SIZE
    gamma = args.gamma if args.gamma is not None else (
        existing.gamma if existing else DEFAULT_GAMMA)
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"--gamma must be in (0, 1], got {gamma}")
    if args.tokenizer:
        tokenizer = load_tokenizer_config(args.tokenizer)
    else:
        tokenizer = existing.tokenizer_config if existing else ActionTokenizer().to_config()
    mapping = TopicMapping.from_yaml(args.mapping) if args.mapping else None
    if args.workers < 1:
        raise ValueError("--workers must be >= 1")
    state_dim = existing.meta.get("state_dim") if existing else None
    return ConvertOptions(tokenizer=tokenizer, image_size=image_size, gamma=gamma,
                          mapping=mapping, max_image_age=args.max_image_age, rate=args.rate,
                          state_dim=state_dim, defer_silent_state=True)


def parse_image_size(text: str) -> tuple[int, int]:
    """'128' -> (128, 128); '96x128' -> (96, 128) as (H, W)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise ValueError(f"--image-size must be N or HxW (pixels), got '{text}'")
    return parts[0], parts[1]
