"""``qt-ros repair BAG...``: make an incomplete or damaged bag complete again, keeping its data.

A recorder killed mid-episode (SIGKILL, power loss, full disk) leaves an MCAP file without its
summary and a bag directory without ``metadata.yaml``; :mod:`qt_ros.episodes.bag_repair` rewrites
every readable message into a complete bag (see there). The original file is kept as
``<name>.damaged`` unless ``--no-backup``.

Exit status: 0 when every bag is healthy or was repaired, 1 when some could not be.
"""

from __future__ import annotations

import argparse

from qt_ros.episodes.bag_metadata import find_bags
from qt_ros.episodes.bag_repair import repair_bag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", metavar="BAG",
                        help="bag directories, or directories holding bags (a record_dir)")
    parser.add_argument("--check", action="store_true",
                        help="only report what is wrong; change nothing")
    parser.add_argument("--no-backup", action="store_true",
                        help="delete the damaged data file instead of keeping it as *.damaged")


def run(args: argparse.Namespace) -> int:
    failed = 0
    for bag in find_bags(args.bags):
        result = repair_bag(bag, check=args.check, backup=not args.no_backup)
        print(f"{result.state:>12}  {result.bag}: {result.detail}")
        failed += result.state in ("failed", "needs repair")
    return 1 if failed else 0
