"""``qt-ros train DATASET... --out RUN``: offline Q-Transformer training on converted datasets.

One process on a CPU or a GPU, or many through ``torchrun`` (PyTorch DDP) with the same command::

    qt-ros train data/ --out run/ --steps 20000
    qt-ros train demos/ robot/ --weights 1 3 --out run/       # two datasets, read in place
    qt-ros train --config train.yaml --steps 50000             # a YAML file, options override it
    qt-ros train --resume run/ [--steps 40000]                 # continue exactly (after Ctrl-C,
                                                               # SIGTERM, --max-minutes, a crash)
    torchrun --nproc-per-node 4 [--nnodes 2 ...] -m qt_ros.cli train data/ --out run/

The baseline and the paper's ablations are flags of the same command, on the same network and
data::

    qt-ros train data/ --out bc/ --algo bc                   # behaviour cloning, successes only
    qt-ros train data/ --out bc-all/ --algo bc --bc-episodes all
    qt-ros train data/ --out no-cql/ --alpha 0               # no conservative term
    qt-ros train data/ --out no-mc/ --no-mc-lower-bound      # no Monte Carlo lower bound
    qt-ros train data/ --out n3/ --n-step 3                  # n-step returns

The work is :func:`qt_ros.qtransformer.trainer.train`; the options are generated from its
``TrainConfig`` and the learner's ``LearnerConfig`` (in their own group), which hold every
default and its description. ``--init`` starts from a checkpoint's weights only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qt_ros.common.settings import add_arguments as add_config_arguments
from qt_ros.common.settings import description
from qt_ros.data.dataset_format import DatasetError
from qt_ros.qtransformer.learner_config import LearnerConfig
from qt_ros.qtransformer.train_config import (
    CONFIG_FILE,
    TrainConfig,
    merge,
    read_config_file,
)

# Options of the command itself, not of the run.
_OWN = ("config", "resume")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``qt-ros train``: one per ``TrainConfig`` and ``LearnerConfig`` field,
    plus ``--config`` and ``--resume``. Only the options given override the config file."""
    field = {f.name: f for f in TrainConfig.__dataclass_fields__.values()}["dataset"]
    parser.add_argument("dataset", nargs="*", help=description(field))
    parser.add_argument("--config", metavar="YAML",
                        help=f"training options from a YAML file (names as below with _; the "
                             f"learner's under learner:, ModelConfig fields under model:); "
                             f"options given here override it. A run saves its own as "
                             f"OUT/{CONFIG_FILE}")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in RUN_DIR exactly from its last checkpoint "
                             "(RUN_DIR/last: weights, target network, optimizer, step, "
                             "sampler, RNG) with its options; options given here override "
                             "them (e.g. a larger --steps)")
    add_config_arguments(parser, TrainConfig, skip=("learner", "model", "dataset"))
    learner = parser.add_argument_group(
        "learner (defaults: the paper's algorithm)",
        "Baseline and the paper's ablations, same network, data and command: --algo bc "
        "(behaviour cloning; --bc-episodes successes|all); --alpha 0 (no conservative term); "
        "--no-mc-lower-bound (no Monte Carlo lower bound); --n-step N (n-step returns). The "
        "checkpoint's config.json records which ('extra' > 'algorithm').")
    add_config_arguments(learner, LearnerConfig)
    # An option counts only when given: its default lives in the dataclass, and a config file
    # or a resumed run's options sit between the two.
    for action in parser._actions:
        if action.dest not in ("help", *_OWN):
            action.default = argparse.SUPPRESS
            action.required = False


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's ``TrainConfig``: the defaults, then ``--resume``'s saved options or
    ``--config``'s file, then the options given (raises ValueError on a bad value)."""
    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "verb"}
    resume, config = given.pop("resume", None), given.pop("config", None)
    if given.get("dataset") == []:
        given.pop("dataset")
    file_values: dict = {}
    if resume:
        saved = Path(resume) / CONFIG_FILE
        if not saved.is_file():
            raise ValueError(f"{resume} is not a run directory of `qt-ros train` (no "
                             f"{CONFIG_FILE}): nothing to resume")
        file_values = {**read_config_file(saved), "out": str(resume)}
    if config:
        file_values = {**file_values, **read_config_file(config)}
    learner_names = set(LearnerConfig.__dataclass_fields__)
    train_names = set(TrainConfig.__dataclass_fields__)
    return merge(file_values, {k: v for k, v in given.items() if k in train_names},
                 {k: v for k, v in given.items() if k in learner_names})


def run(args: argparse.Namespace) -> int:
    """Train; a user's mistake (no dataset, a checkpoint or data that do not fit, a bad
    config file) is a message and exit status 2, not a traceback."""
    from qt_ros.common.allocator import retain_freed_memory
    from qt_ros.qtransformer.checkpoint import CheckpointError
    from qt_ros.qtransformer.trainer import train

    retain_freed_memory()
    try:
        cfg = config_from_args(args)
        train(cfg, resume=bool(getattr(args, "resume", None)))
    except (DatasetError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"qt-ros train: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qt-ros train: interrupted; continue from the last checkpoint with --resume "
              f"{getattr(args, 'out', None) or getattr(args, 'resume', None) or 'OUT'}",
              file=sys.stderr)
        return 130
    return 0
