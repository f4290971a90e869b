"""``qt-ros compare DATASET --out DIR``: Q-T, BC and the paper's ablations on one dataset.

Trains every variant (``--variants``, default: Q-T, BC on successes, BC on all episodes, Q-T
without the conservative term, Q-T without the Monte Carlo bound) with the same network, data
and budget, evaluates each in closed loop on the same unseen seeds exactly as ``qt-ros eval``
does, and writes ``DIR/comparison.md`` (a Markdown table: success with its Wilson 95 %
interval), ``comparison.json`` and ``comparison.png``; each variant's checkpoint and
``eval.json`` are in ``DIR/<variant>/``. The work is :mod:`qt_ros.evaluation.comparison`.

    qt-ros sim collect --out episodes/ --demos 200 --replays 0
    qt-ros convert episodes/ --out data/ --mapping episodes/convert_mapping.yaml
    qt-ros compare data/ --out compare/ --preset tiny --steps 12000 --episodes 100 \
        --config config/train/demo.yaml       # the model and training fields of every variant
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qt_ros.common.settings import from_namespace


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Training options of every variant, evaluation options, and which variants."""
    from qt_ros.evaluation.comparison import DEFAULT_VARIANTS, VARIANTS

    parser.add_argument("dataset", help="dataset directory (qt-ros convert --out)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--config", metavar="YAML",
                        help="qt-ros train --config file of every variant (history, model: "
                             "and learner: fields, lr_schedule, ...); the options below "
                             "override it, and each variant its own switches")
    parser.add_argument("--preset", default="tiny", help="model size of every variant")
    parser.add_argument("--steps", type=int, default=12000, help="gradient steps per variant")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--encoder", default="hash", choices=("hash", "minilm"))
    parser.add_argument("--max-minutes", type=float, default=0.0,
                        help="training wall-time limit per variant (0: none)")
    parser.add_argument("--episodes", type=int, default=100, help="eval episodes per variant")
    parser.add_argument("--task", default="lift")
    parser.add_argument("--workers", type=int, default=2, help="eval worker processes")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Compare; bad options are one message and exit status 2."""
    import dataclasses

    from qt_ros.data.dataset_format import DatasetError
    from qt_ros.evaluation.comparison import ComparisonError, compare, parse_variants
    from qt_ros.evaluation.eval_config import EvalConfig, EvalError
    from qt_ros.qtransformer.train_config import TrainConfig, merge, read_config_file

    try:
        variants = parse_variants(args.variants)
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name not in ("learner", "model") and hasattr(args, f.name)}
        base_train = merge(read_config_file(args.config) if args.config else {},
                           {**given, "dataset": (args.dataset,), "out": args.out, "workers": 0},
                           {"lr": args.lr})
        base_eval = from_namespace(EvalConfig, args, checkpoint="-", out="")
    except (ComparisonError, EvalError, ValueError, TypeError) as e:
        print(f"qt-ros compare: {e}", file=sys.stderr)
        return 2
    try:
        rows = compare(base_train, base_eval, variants, Path(args.out),
                       progress=lambda text: print(text, file=sys.stderr))
    except (DatasetError, ComparisonError, EvalError, FileNotFoundError) as e:
        print(f"qt-ros compare: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "comparison.md").read_text(), end="")
    print(f"wrote {args.out}/comparison.md, comparison.json, comparison.png "
          f"({len(rows)} variants)")
    return 0
