"""``qt-ros eval CHECKPOINT --episodes N``: closed-loop success on unseen scenes of the simulator.

The checkpoint acts through exactly the policy node's acting code (the node's loader, its control
loop and safety filter, the ``policy`` parameters of ``config/sim.yaml``) on the simulated robot,
in-process and in lockstep (no ROS), one episode per scene seed from ``--seed-offset`` on. Prints
a summary and writes ``eval.json`` (success rate with its Wilson 95 % interval, steps, how the
episodes ended, every seed's outcome, the settings), ``eval.png`` and, with ``--video K``, K
episodes as GIFs. ``--policy demonstrator`` runs the scripted demonstrator through the same
loop: the sanity anchor (it should succeed almost always). The work is
:mod:`qt_ros.evaluation`.

    qt-ros eval ckpt/ --episodes 30 --workers 2 --video 3
    qt-ros eval --policy demonstrator --episodes 20

``--offline CHECKPOINT DATASET`` needs no simulator: TD error, predicted Q against the Monte
Carlo return of successful and failed episodes and the greedy action's per-dimension agreement
with the demonstrations (overall and per phase of the data's gripper: reaching, carrying), on
the dataset's steps, as ``offline_eval.json`` and ``offline_eval.png``
(:mod:`qt_ros.evaluation.offline_eval`)::

    qt-ros eval --offline ckpt/ data/ [--offline-steps 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from qt_ros.common.settings import add_arguments as add_config_arguments
from qt_ros.common.settings import from_namespace
from qt_ros.evaluation.eval_config import EvalConfig, EvalError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``qt-ros eval``: one per :class:`EvalConfig` field."""
    parser.add_argument("checkpoint", nargs="?", default="",
                        help="checkpoint directory (qt-ros train output); not needed with "
                             "--policy demonstrator")
    parser.add_argument("dataset", nargs="?", default="",
                        help="with --offline: the dataset to evaluate on (qt-ros convert --out)")
    parser.add_argument("--offline", action="store_true",
                        help="evaluate on DATASET instead of the simulator: TD error, Q vs "
                             "Monte Carlo return, agreement with the demonstrations (JSON, PNG)")
    parser.add_argument("--offline-steps", type=int, default=0,
                        help="with --offline: dataset steps to read, evenly spaced (0: all)")
    add_config_arguments(parser, EvalConfig, skip=("checkpoint",))


def run(args: argparse.Namespace) -> int:
    """Evaluate; a user's mistake (no checkpoint, one that does not fit the simulated robot,
    no episodes) is a message and exit status 2, not a traceback."""
    if args.offline:
        return run_offline(args)
    from tqdm import tqdm

    from qt_ros.control.policy_config import ConfigError
    from qt_ros.evaluation import eval_report
    from qt_ros.evaluation.closed_loop_eval import check_actor, run_episodes
    from qt_ros.evaluation.eval_config import resolve_setup
    from qt_ros.sim.simulator import SimRenderError

    try:
        config = from_namespace(EvalConfig, args)
        setup = resolve_setup(config)
        model_id = check_actor(config, setup)
    except (EvalError, ConfigError) as e:
        print(f"qt-ros eval: {e}", file=sys.stderr)
        return 2
    out = config.out_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"qt-ros eval: cannot create the output directory {out}: {e}; choose one with "
              f"--out", file=sys.stderr)
        return 2
    start = time.monotonic()
    wins = [0, 0]
    with tqdm(total=config.episodes, desc="eval", unit="episode", file=sys.stderr) as bar:
        def progress(outcome) -> None:
            wins[0] += outcome.success
            wins[1] += 1
            bar.set_postfix_str(f"{wins[0]}/{wins[1]} successes")
            bar.update(1)

        try:
            outcomes = run_episodes(config, setup, progress)
        except (SimRenderError, BrokenProcessPool) as e:
            print(f"qt-ros eval: the simulator or a worker failed: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("qt-ros eval: interrupted; nothing written", file=sys.stderr)
            return 130
    summary = eval_report.summarize(outcomes, config, setup, model_id, time.monotonic() - start)
    paths = [eval_report.write_json(summary, out), eval_report.plot(summary, out)]
    paths += eval_report.write_videos(outcomes, out)
    print(eval_report.summary_text(summary))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def run_offline(args: argparse.Namespace) -> int:
    """``--offline``: the checkpoint's Q function on a dataset's steps (no simulator)."""
    from qt_ros.data.dataset_format import DatasetError
    from qt_ros.data.torch_dataset import QTransformerDataset
    from qt_ros.evaluation import offline_eval
    from qt_ros.qtransformer.checkpoint import CheckpointError, load_model
    from qt_ros.qtransformer.instruction_encoder import make_encoder
    from qt_ros.qtransformer.learner_config import LearnerConfig

    if not args.checkpoint or not args.dataset:
        print("qt-ros eval: --offline needs a checkpoint and a dataset: qt-ros eval --offline "
              "CHECKPOINT DATASET", file=sys.stderr)
        return 2
    try:
        model, _, encoder_config, config = load_model(args.checkpoint, args.device)
        extra = config.get("extra") or {}
        train = extra.get("train") or {}
        learner = LearnerConfig(**{k: v for k, v in (extra.get("learner") or {}).items()
                                   if k in LearnerConfig.__dataclass_fields__})
        dataset = QTransformerDataset(
            args.dataset, history=model.cfg.history, n_step=int(train.get("n_step", 1)),
            gamma=float(train.get("gamma", 0.98)),
            instruction_embeddings=make_encoder(encoder_config).encode_batch)
        if (tuple(dataset.image_size), dataset.state_dim, tuple(dataset.tokenizer.bins)) != (
                tuple(model.cfg.image_size), model.cfg.state_dim, tuple(model.cfg.action_bins)):
            raise DatasetError(f"dataset {args.dataset} (image {tuple(dataset.image_size)}, "
                               f"state {dataset.state_dim}, bins {dataset.tokenizer.bins}) does "
                               f"not fit checkpoint {args.checkpoint} (image "
                               f"{tuple(model.cfg.image_size)}, state {model.cfg.state_dim}, "
                               f"bins {list(model.cfg.action_bins)})")
    except (CheckpointError, DatasetError, ValueError, OSError) as e:
        print(f"qt-ros eval: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or Path(args.checkpoint) / f"offline-{Path(args.dataset).name}")
    out.mkdir(parents=True, exist_ok=True)
    summary, steps = offline_eval.evaluate(model, dataset, learner, args.offline_steps)
    summary.update(checkpoint=str(args.checkpoint), dataset=str(args.dataset),
                   model_id=config.get("model_id"))
    paths = [offline_eval.write_json(summary, out), offline_eval.plot(summary, steps, out)]
    q = summary["q_vs_return"]
    print(f"{summary['steps']} steps: TD error {summary['td_error']:.4g}; Q / return: "
          + "; ".join(f"{g} {q[g]['mean_q']:.3f} / {q[g]['mean_return']:.3f}"
                      for g in ("success", "failure") if q[g]["steps"])
          + (f"; agreement with the {summary['agreement']['reference']} "
             f"{summary['agreement']['mean']:.1%}" if summary["agreement"]["mean"] is not None
             else ""))
    for phase, row in (summary["phases"] or {}).items():
        if row["steps"]:
            direction = row.get("direction") or {}
            agreement = sum(row["agreement"].values()) / len(row["agreement"])
            print(f"  {phase}: {row['steps']} steps, agreement {agreement:.1%}"
                  + (f"; x/y direction cosine {direction['cosine']:.2f} over "
                     f"{direction['steps']} moving steps" if direction.get("cosine") is not None
                     else ""))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
