"""``qt-ros train DATASET --out CHECKPOINT``: offline Q-Transformer training on a converted dataset.

One process on a CPU or a GPU, or many through ``torchrun`` (PyTorch DDP) with the same command::

    qt-ros train data/ --out ckpt/ --steps 20000
    torchrun --nproc-per-node 4 -m qt_ros.cli train data/ --out ckpt/ --steps 20000

The baseline and the paper's ablations are flags of the same command, on the same network and
data::

    qt-ros train data/ --out bc/ --algo bc                   # behaviour cloning, successes only
    qt-ros train data/ --out bc-all/ --algo bc --bc-episodes all
    qt-ros train data/ --out no-cql/ --alpha 0               # no conservative term
    qt-ros train data/ --out no-mc/ --no-mc-lower-bound      # no Monte Carlo lower bound
    qt-ros train data/ --out n3/ --n-step 3                  # n-step returns

The work is :func:`qt_ros.qtransformer.trainer.train`; the options are generated from its
``TrainConfig`` and the learner's ``LearnerConfig`` (in their own group), which hold every
default and its description. ``--init`` continues from a checkpoint (weights only).
"""

from __future__ import annotations

import argparse
import sys

from qt_ros.common.settings import add_arguments as add_config_arguments
from qt_ros.common.settings import from_namespace
from qt_ros.data.dataset_format import DatasetError
from qt_ros.qtransformer.learner_config import LearnerConfig
from qt_ros.qtransformer.trainer import TrainConfig, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``qt-ros train``: one per ``TrainConfig`` and ``LearnerConfig`` field."""
    add_config_arguments(parser, TrainConfig, skip=("learner",), positional=("dataset",))
    learner = parser.add_argument_group(
        "learner (defaults: the paper's algorithm)",
        "Baseline and the paper's ablations, same network, data and command: --algo bc "
        "(behaviour cloning; --bc-episodes successes|all); --alpha 0 (no conservative term); "
        "--no-mc-lower-bound (no Monte Carlo lower bound); --n-step N (n-step returns). The "
        "checkpoint's config.json records which ('extra' > 'algorithm').")
    add_config_arguments(learner, LearnerConfig)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's ``TrainConfig`` from the parsed options (raises ValueError on a bad value)."""
    return from_namespace(TrainConfig, args, learner=from_namespace(LearnerConfig, args))


def run(args: argparse.Namespace) -> int:
    """Train; a user's mistake (no dataset, a checkpoint that does not fit) is a message and
    exit status 2, not a traceback."""
    try:
        train(config_from_args(args))
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        print(f"qt-ros train: {exc}", file=sys.stderr)
        return 2
    return 0
