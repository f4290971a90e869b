"""``qt-ros sim collect --out RECORD_DIR``: demonstrations and noisy replays on the simulated
robot, recorded in-process into the bags the ROS nodes write (:mod:`qt_ros.sim.collection`).

The record directory then holds one MCAP bag per episode, ``catalog.json`` (outcome from the
success detector, reward, and under ``collection`` the kind, seed, noise and scripted mistake)
and ``convert_mapping.yaml``. Convert it like any demonstration recording::

    qt-ros convert RECORD_DIR --out DATASET --mapping RECORD_DIR/convert_mapping.yaml

Exit status: 0 when every episode was recorded, 2 on bad options or a failed worker, 130 when
interrupted (Ctrl-C: the episodes running then are finished, no new one starts).
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from qt_ros.common.settings import add_arguments as add_config_arguments
from qt_ros.common.settings import from_namespace
from qt_ros.episodes.catalog import CatalogError
from qt_ros.episodes.recorder import RecorderError
from qt_ros.sim.collect_config import CollectConfig, CollectError
from qt_ros.sim.collection import MAPPING_FILE, CollectSummary, collect, pending_episodes
from qt_ros.sim.simulator import SimRenderError

EPILOG = ("convert the episodes with: qt-ros convert RECORD_DIR --out DATASET --mapping "
          f"RECORD_DIR/{MAPPING_FILE} (written by this command)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_config_arguments(parser, CollectConfig)
    parser.add_argument("--json", metavar="FILE", help="also write the summary as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Collect the episodes, with a progress bar; print the summary and how to convert."""
    try:
        config = from_namespace(CollectConfig, args)
    except CollectError as exc:
        print(f"qt-ros sim collect: {exc}", file=sys.stderr)
        return 2
    try:
        total = len(pending_episodes(config))
    except CatalogError as exc:
        print(f"qt-ros sim collect: {exc}", file=sys.stderr)
        return 2
    bar = tqdm(total=total, unit="episode", desc="collect", file=sys.stderr,
               disable=args.quiet, dynamic_ncols=True)
    wins = 0

    def progress(report) -> None:
        nonlocal wins
        wins += report.outcome == "success"
        bar.update(1)
        bar.set_postfix(successes=wins)

    try:
        summary = collect(config, progress)
    except (CollectError, RecorderError, CatalogError, SimRenderError, OSError) as exc:
        bar.close()
        print(f"qt-ros sim collect: {exc}", file=sys.stderr)
        return 2
    bar.close()
    print(summary_text(summary))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary.to_dict(), f, indent=1)
    if summary.interrupted:
        print(f"qt-ros sim collect: interrupted (Ctrl-C) after {len(summary.episodes)} of "
              f"{total} episode(s); each started episode was finished, so every bag is "
              f"complete; the same command with --resume collects the rest", file=sys.stderr)
        return 130
    return 0


def summary_text(summary: CollectSummary) -> str:
    """Episodes and successes per kind, steps and rates, and the convert command."""
    d = summary.to_dict()
    skipped = f"; skipped {d['skipped']} already recorded" if d["skipped"] else ""
    lines = [f"collected {d['episodes']} episode(s), {d['steps']} steps in {d['seconds']:.1f} s "
             f"({d['steps_per_s']:.0f} steps/s, {d['episodes_per_min']:.0f} episodes/min, "
             f"{d['workers']} worker(s)){skipped}"]
    for kind, c in d["by_kind"].items():
        if c["episodes"]:
            lines.append(f"  {kind:7s} {c['episodes']:5d} episode(s), {c['successes']:5d} "
                         f"success(es), {c['with_mistake']:5d} with a scripted mistake, "
                         f"{c['steps']} steps")
    if d["mistakes"]:
        lines.append("  scripted mistakes: " + ", ".join(f"{k} {v}"
                                                         for k, v in d["mistakes"].items()))
    lines.append(f"bags and catalog.json in {d['record_dir']}; convert with:\n"
                 f"  qt-ros convert {d['record_dir']} --out DATASET --mapping "
                 f"{d['record_dir']}/{MAPPING_FILE}")
    return "\n".join(lines)
