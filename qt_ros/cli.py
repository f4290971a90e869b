"""The ``qt-ros`` command line: one verb per step of the data loop.

Each verb lives in its own module, imported only when that verb runs, so ``qt-ros --help`` is
instant and never imports PyTorch or rclpy. A verb module defines::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...     # the exit status

Verbs with sub-verbs (``dataset info``, ``bench act``) name one module per sub-verb.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from qt_ros import __version__

# verb -> (module, one-line help); a dict value instead of a tuple is a group of sub-verbs.
VERBS: dict[str, tuple[str, str] | dict[str, tuple[str, str]]] = {
    "convert": ("qt_ros.commands.convert", "convert episode bags (ours or teleop) to a dataset"),
    "dataset": {
        "info": ("qt_ros.commands.dataset_info", "summarize a dataset and plot its episodes (PNG)"),
    },
    "repair": ("qt_ros.commands.repair", "reindex a bag a crash left incomplete, keeping its data"),
    "train": ("qt_ros.commands.train", "train a Q-Transformer offline on a dataset"),
    "compare": ("qt_ros.commands.compare",
                "train Q-T, BC and ablations on one dataset, evaluate each (Markdown table)"),
    "eval": ("qt_ros.commands.eval", "closed-loop success of a checkpoint on the simulated robot "
                                     "(--offline: Q and TD error on a dataset)"),
    "select": ("qt_ros.commands.select",
               "choose the checkpoint to deploy by closed-loop success on held-out scenes"),
    "export": ("qt_ros.commands.export",
               "export a checkpoint's acting path to ONNX or TorchScript, checked against it"),
    "sim": {
        "collect": ("qt_ros.commands.sim_collect",
                    "record demonstrations and noisy replays on the simulated robot, fast"),
    },
    "bench": {
        "collect": ("qt_ros.commands.bench_collect", "sim collect speed: steps/s (JSON)"),
        "act": ("qt_ros.commands.bench_act", "time greedy action selection (JSON)"),
        "train": ("qt_ros.commands.bench_train", "time learner updates (JSON)"),
        "record": ("qt_ros.commands.bench_record",
                   "recorder drops and CPU under camera load (JSON)"),
        "convert": ("qt_ros.commands.bench_convert",
                    "bag-to-dataset conversion speed and memory (JSON)"),
        "policy-node": ("qt_ros.commands.bench_policy_node",
                        "policy node latency, missed deadlines (JSON)"),
        "eval": ("qt_ros.commands.bench_eval", "closed-loop eval episodes per minute (JSON)"),
        "faults": ("qt_ros.commands.bench_faults",
                   "fault injection: bad frames, damaged bags, recorder faults (JSON counts)"),
    },
}


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser; only the module of the verb named in ``argv`` is imported."""
    parser = argparse.ArgumentParser(
        prog="qt-ros",
        description="Q-Transformer on ROS 2: convert episode bags, train, evaluate, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"qt-ros {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    chosen = [a for a in argv if not a.startswith("-")][:2]
    for verb, spec in VERBS.items():
        if isinstance(spec, dict):
            group = verbs.add_parser(verb, help=f"{verb}: " + ", ".join(spec))
            subs = group.add_subparsers(dest="subverb", metavar="SUBVERB")
            subs.required = True
            for sub, (module, help_) in spec.items():
                p = subs.add_parser(sub, help=help_, description=help_)
                if chosen[:2] == [verb, sub]:
                    _attach(p, module)
        else:
            module, help_ = spec
            p = verbs.add_parser(verb, help=help_, description=help_)
            if chosen[:1] == [verb]:
                _attach(p, module)
    return parser


def _attach(parser: argparse.ArgumentParser, module_name: str) -> None:
    if _missing(module_name):
        parser.set_defaults(_run=lambda args: _not_available(module_name))
        return
    module = importlib.import_module(module_name)
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)


def _not_available(module_name: str) -> int:
    print(f"qt-ros: this verb is not available in this installation ({module_name} is missing)",
          file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
