"""``qt-ros select RUN_OR_CHECKPOINT... --episodes N``: choose the checkpoint to deploy by
closed-loop success on held-out scenes.

Every candidate acts in ``qt-ros eval``'s closed loop on the same scene seeds; the one with
the most successes (a tie: the later one) is chosen, ``selection.json`` lists them all and
``--deploy DIR`` copies the chosen weights and config there (what the policy node loads). A run
directory trained with ``--keep-every`` stands for its kept copies (``steps/<step>/``; the last
``--last K`` of them). Take validation seeds apart from the ones results are reported on
(``--seed-offset``, default 50000; ``qt-ros eval`` reports on 100000..): the best of several
noisy scores is biased upwards. ``--incumbent CHECKPOINT`` (the policy in service) turns the
choice into a decision to replace it: it acts on the same seeds and stays unless the best
candidate has more successes and wins a paired sign test (``--significance``, Bonferroni over
the candidates). The work is :mod:`qt_ros.evaluation.checkpoint_selection`.

    qt-ros train data/ --out run/ --keep-every 2000
    qt-ros select run/ --last 4 --episodes 30 --seed-offset 50000 --workers 2 --deploy policy/
    qt-ros train data+own/ --out run2/ --init policy/ --keep-every 1000
    qt-ros select run2/ --last 4 --incumbent policy/ --episodes 30 --deploy policy/
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from qt_ros.common.settings import add_arguments as add_config_arguments
from qt_ros.common.settings import from_namespace
from qt_ros.evaluation.eval_config import EvalConfig, EvalError

VALIDATION_SEED_OFFSET = 50_000  # apart from qt-ros eval's 100000.. and sim collect's 0..


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Candidates, how many kept copies, where to deploy, and ``qt-ros eval``'s options."""
    parser.add_argument("candidates", nargs="+", metavar="RUN_OR_CHECKPOINT",
                        help="checkpoint directories, or run directories with kept copies "
                             "(qt-ros train --keep-every)")
    parser.add_argument("--last", type=int, default=0,
                        help="of each run directory, its last K kept copies (0: all)")
    parser.add_argument("--deploy", type=Path,
                        help="copy the chosen checkpoint here (a new directory or a checkpoint "
                             "to replace)")
    parser.add_argument("--incumbent", type=Path,
                        help="the checkpoint in service: evaluated on the same seeds, it stays "
                             "unless a candidate is better by a paired sign test")
    parser.add_argument("--significance", type=float, default=0.05,
                        help="with --incumbent: replace it only at this p-value or lower (one-"
                             "sided sign test on the seeds where the two differ, times the "
                             "number of candidates); 1: whenever a candidate has more successes")
    parser.add_argument("--seed-offset", type=int, default=VALIDATION_SEED_OFFSET,
                        help="scene seed of the first episode (episode k: seed_offset + k); "
                             "the default keeps the validation scenes apart from qt-ros eval's "
                             f"({EvalConfig.seed_offset}..) and from data collection's "
                             f"(default: {VALIDATION_SEED_OFFSET})")
    add_config_arguments(parser, EvalConfig, skip=("checkpoint", "video", "policy",
                                                   "seed_offset"))


def run(args: argparse.Namespace) -> int:
    """Select; bad candidates or options are one message and exit status 2."""
    from tqdm import tqdm

    from qt_ros.control.policy_config import ConfigError
    from qt_ros.evaluation.checkpoint_selection import (
        SelectionError,
        deploy,
        expand_candidates,
        is_checkpoint,
        select,
        selection_text,
    )
    from qt_ros.sim.simulator import SimRenderError

    try:
        if args.last < 0:
            raise SelectionError("--last must be >= 0 (0: every kept copy)")
        candidates = expand_candidates(args.candidates, args.last)
        if not 0.0 < args.significance <= 1.0:
            raise SelectionError(f"--significance must be in (0, 1], got {args.significance}")
        if args.incumbent is not None and not is_checkpoint(args.incumbent):
            raise SelectionError(f"--incumbent {args.incumbent} is not a checkpoint "
                                 f"(model.safetensors and config.json)")
        if args.deploy and args.deploy.exists() and not is_checkpoint(args.deploy):
            raise SelectionError(f"--deploy {args.deploy} exists and is not a checkpoint; "
                                 f"refusing to replace it (choose a new directory)")
        config = from_namespace(EvalConfig, args, checkpoint=str(candidates[0]))
    except (SelectionError, EvalError) as e:
        print(f"qt-ros select: {e}", file=sys.stderr)
        return 2
    out = Path(config.out or Path(args.candidates[0]) / "selection")
    total = (len(candidates) + (args.incumbent is not None)) * config.episodes
    with tqdm(total=total, desc="select", unit="episode", file=sys.stderr) as bar:
        def progress(row: dict) -> None:
            bar.write(f"step {row['step']}: {row['successes']}/{row['episodes']} successes")

        try:
            selection = select(candidates, config, out, progress, lambda _: bar.update(1),
                               args.incumbent, args.significance)
        except (EvalError, ConfigError, SelectionError) as e:
            print(f"qt-ros select: {e}", file=sys.stderr)
            return 2
        except (SimRenderError, BrokenProcessPool) as e:
            print(f"qt-ros select: the simulator or a worker failed: {type(e).__name__}: {e}; "
                  f"nothing deployed", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("qt-ros select: interrupted; nothing deployed", file=sys.stderr)
            return 130
    print(selection_text(selection))
    written = [out / "selection.json"]
    if args.deploy:
        try:
            written.append(deploy(Path(selection["chosen"]["checkpoint"]), args.deploy))
        except (SelectionError, OSError) as e:
            print(f"qt-ros select: cannot deploy: {e}", file=sys.stderr)
            return 1
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
