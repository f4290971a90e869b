"""What ``qt-ros eval`` reports: ``eval.json`` (rate, interval, steps, how episodes ended, every
seed's outcome, the settings), a summary for the terminal and ``eval.png``; :func:`evaluate`
runs a configuration's episodes and writes its ``eval.json``."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from qt_ros.common.files import atomic_write_text
from qt_ros.evaluation.closed_loop_eval import EpisodeOutcome, check_actor, run_episodes
from qt_ros.evaluation.eval_config import EvalConfig, EvalSetup, resolve_setup
from qt_ros.evaluation.intervals import wilson_interval


def summarize(outcomes: list[EpisodeOutcome], config: EvalConfig, setup: EvalSetup,
              model_id: str, wall_s: float) -> dict:
    """The content of ``eval.json``."""
    n = len(outcomes)
    wins = sum(o.success for o in outcomes)
    low, high = wilson_interval(wins, n)
    steps = [o.steps for o in outcomes]
    return {
        "success_rate": wins / n,
        "successes": wins,
        "episodes": n,
        "wilson_95": [round(low, 4), round(high, 4)],
        "steps": {"mean": round(statistics.fmean(steps), 2),
                  "median": statistics.median(steps), "min": min(steps), "max": max(steps)},
        "termination": dict(Counter(o.reason for o in outcomes)),
        "grasped_at_end": sum(o.grasped for o in outcomes),
        "episodes_with_warnings": sum(bool(o.warnings) for o in outcomes),
        "policy": config.policy,
        "model_id": model_id,
        "checkpoint": config.checkpoint if config.policy == "checkpoint" else None,
        "task": config.task,
        "seeds": [config.seed_offset, config.seed_offset + n - 1],
        "wall_s": round(wall_s, 2),
        "episodes_per_minute": round(60.0 * n / wall_s, 1) if wall_s > 0 else None,
        "settings": {**dataclasses.asdict(config), "max_steps": config.decisions,
                     "sim": {k: v for k, v in dataclasses.asdict(setup.sim).items()
                             if k != "extra"},
                     "policy_config": {k: list(v) if isinstance(v, tuple) else v for k, v in
                                       dataclasses.asdict(setup.policy).items()},
                     "demonstrator": dataclasses.asdict(setup.demonstrator)
                     if config.policy == "demonstrator" else None,
                     "params_files": list(setup.params_files)},
        "per_seed": [o.row() for o in outcomes],
    }


def evaluate(config: EvalConfig,
             on_episode: Callable[[EpisodeOutcome], None] | None = None) -> dict:
    """Run ``config``'s episodes and write ``eval.json`` to its output directory; returns the
    summary (the JSON's content). A checkpoint that does not fit the set-up raises as
    ``resolve_setup`` and ``check_actor`` do. (``qt-ros compare`` and ``qt-ros select``; the
    ``qt-ros eval`` command adds its progress bar, plot and videos.)"""
    setup = resolve_setup(config)
    model_id = check_actor(config, setup)
    start = time.monotonic()
    outcomes = run_episodes(config, setup, on_episode)
    result = summarize(outcomes, config, setup, model_id, time.monotonic() - start)
    config.out_dir().mkdir(parents=True, exist_ok=True)
    write_json(result, config.out_dir())
    return result


def summary_text(summary: dict) -> str:
    """A few lines for the terminal."""
    low, high = summary["wilson_95"]
    steps, ends = summary["steps"], summary["termination"]
    return "\n".join([
        f"{summary['model_id']} on '{summary['task']}', seeds {summary['seeds'][0]}.."
        f"{summary['seeds'][1]}:",
        f"  success {summary['successes']}/{summary['episodes']} = "
        f"{100 * summary['success_rate']:.0f} % (Wilson 95 % interval {100 * low:.0f}-"
        f"{100 * high:.0f} %)",
        f"  steps mean {steps['mean']:.1f}, median {steps['median']:g}; ended by "
        + ", ".join(f"{reason} {count}" for reason, count in sorted(ends.items()))
        + f"; block grasped at the end in {summary['grasped_at_end']}",
        f"  {summary['wall_s']:.1f} s ({summary['episodes_per_minute']} episodes/min)",
    ])


def write_json(summary: dict, out: Path) -> Path:
    path = out / "eval.json"
    atomic_write_text(path, json.dumps(summary, indent=1) + "\n")
    return path


def plot(summary: dict, out: Path) -> Path:
    """``eval.png``: steps of every episode coloured by outcome, and the rate with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["per_seed"]
    fig, (ax, ax_rate) = plt.subplots(1, 2, figsize=(11, 3.6),
                                      gridspec_kw={"width_ratios": [5, 1]})
    colours = ["tab:green" if r["success"] else "tab:red" for r in rows]
    ax.bar(range(len(rows)), [r["steps"] for r in rows], color=colours)
    for i, r in enumerate(rows):
        if r["reason"] == "terminate":
            ax.plot(i, r["steps"] + 0.6, marker="v", color="black", markersize=4)
    ax.set_xlabel(f"episode (seed - {summary['seeds'][0]}); green: success, red: failure; "
                  f"v: ended by terminate")
    ax.set_ylabel("control steps")
    ax.set_title(f"{summary['model_id']} - {summary['task']}", fontsize=9)
    rate, (low, high) = summary["success_rate"], summary["wilson_95"]
    ax_rate.bar([0], [rate], color="tab:blue", width=0.5)
    ax_rate.errorbar([0], [rate], yerr=[[rate - low], [high - rate]], color="black", capsize=6)
    ax_rate.set_xlim(-0.6, 0.6)
    ax_rate.set_ylim(0, 1)
    ax_rate.set_xticks([])
    ax_rate.set_title(f"success {summary['successes']}/{summary['episodes']}\n"
                      f"95 % [{low:.2f}, {high:.2f}]", fontsize=9)
    fig.tight_layout()
    path = out / "eval.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_videos(outcomes: list[EpisodeOutcome], out: Path) -> list[Path]:
    """One GIF per episode that has frames: ``episode_<seed>_<success|failure>.gif``."""
    from qt_ros.evaluation.episode_video import write_gif

    paths = []
    for o in outcomes:
        if o.frames:
            result = "success" if o.success else "failure"
            paths.append(write_gif(o.frames, out / f"episode_{o.seed}_{result}.gif",
                                   label=f"seed {o.seed}: {result} ({o.reason}, {o.steps} steps)"))
    return paths
