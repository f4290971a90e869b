"""``qt-ros bench faults``: run the fault-injection suites of :mod:`qt_ros.faults` and print
their counts as one JSON object (what was injected, what was detected, what got through)."""

from __future__ import annotations

import argparse
import importlib
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from qt_ros.faults import SUITES

    parser.add_argument("--only", nargs="+", choices=sorted(SUITES), default=sorted(SUITES),
                        help="suites to run (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the injected faults")
    for name in sorted(SUITES):  # each suite's own options (counts, rates); light imports only
        module = importlib.import_module(SUITES[name])
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser.add_argument_group(f"{name} suite"))


def run(args: argparse.Namespace) -> int:
    # The suites start ROS 2 processes: imported here, never when the verb list is built.
    from qt_ros.faults import SUITES

    report = {}
    for name in args.only:
        module = importlib.import_module(SUITES[name])
        report[name] = module.run(args)
    print(json.dumps(report, indent=1))
    return 0
