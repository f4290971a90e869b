"""``qt-ros bench eval``: closed-loop evaluation episodes per minute on this machine.

For each preset (default ``tiny`` and ``small``) a randomly initialised checkpoint that takes the
simulated robot's state (5 joint positions) and has no terminate dimension (so every episode
runs its full ``--max-steps``, as ``bench policy-node`` does) is evaluated exactly as
``qt-ros eval`` evaluates a checkpoint: render, the policy node's control loop, the model, the
simulator, in ``--workers`` processes. Prints one JSON object with, per preset, the episodes per
minute over the whole run (worker start-up and model loading included) and in steady state
(from the per-episode times), steps per second and the time per step. Goal: >= 60 ``tiny``
episodes of 50 steps per minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

GOAL_TINY_EPISODES_PER_MINUTE = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"],
                        help="model presets to measure")
    parser.add_argument("--episodes", type=int, default=12, help="episodes per preset")
    parser.add_argument("--max-steps", type=int, default=50, help="control steps per episode")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes (one torch thread each)")
    parser.add_argument("--task", default="lift", help="simulator task")


def _checkpoint(directory: Path, preset: str) -> str:
    from qt_ros.qtransformer.checkpoint import make_random_checkpoint
    from qt_ros.qtransformer.tokenizer import ActionTokenizer
    from qt_ros.sim.simulator import JOINT_NAMES

    # No terminate dimension: a random model would otherwise end episodes at random steps.
    return str(make_random_checkpoint(directory / preset, preset=preset,
                                      tokenizer=ActionTokenizer(terminate=None),
                                      state_dim=len(JOINT_NAMES), seed=0))


def measure(preset: str, checkpoint: str, args: argparse.Namespace, out: Path) -> dict:
    """Evaluate ``checkpoint`` and time it."""
    from qt_ros.evaluation.closed_loop_eval import run_episodes
    from qt_ros.evaluation.eval_config import EvalConfig, resolve_setup

    config = EvalConfig(checkpoint=checkpoint, episodes=args.episodes, task=args.task,
                        max_steps=args.max_steps, workers=args.workers, out=str(out / preset))
    setup = resolve_setup(config)
    start = time.monotonic()
    outcomes = run_episodes(config, setup)
    wall = time.monotonic() - start
    steps = sum(o.steps for o in outcomes)
    episode_s = [o.seconds for o in outcomes]
    workers = min(args.workers, args.episodes)
    return {
        "episodes": len(outcomes),
        "steps": steps,
        "terminated": sum(o.reason == "terminate" for o in outcomes),
        "wall_s": round(wall, 2),
        "episodes_per_minute": round(60 * len(outcomes) / wall, 1),
        "steady_episodes_per_minute": round(60 * workers / statistics.fmean(episode_s), 1),
        "steps_per_second": round(steps / wall, 1),
        "step_ms": round(1e3 * sum(episode_s) / steps, 2),
    }


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1 or args.max_steps < 1 or args.workers < 1:
        print("qt-ros bench eval: --episodes, --max-steps and --workers must be >= 1",
              file=sys.stderr)
        return 2
    import torch

    results = {}
    with tempfile.TemporaryDirectory(prefix="qt_ros_bench_eval_") as tmp:
        for preset in args.presets:
            checkpoint = _checkpoint(Path(tmp), preset)
            results[preset] = measure(preset, checkpoint, args, Path(tmp))
            print(f"bench eval: {preset}: {results[preset]}", file=sys.stderr)
    report = {
        "benchmark": "eval",
        "task": args.task,
        "max_steps": args.max_steps,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "torch_threads_per_worker": 1,
        "torch": torch.__version__,
        "presets": results,
        "targets": {"tiny_episodes_per_minute": GOAL_TINY_EPISODES_PER_MINUTE},
    }
    print(json.dumps(report))
    return 0
