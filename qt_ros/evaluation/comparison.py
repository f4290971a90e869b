"""The comparison table: Q-Transformer, behaviour cloning and the paper's ablations, trained on one
dataset with one network and budget, each measured in closed loop on the same unseen seeds.

A variant is a name and the training options it changes (:data:`VARIANTS`). For each variant
:func:`compare` trains a checkpoint (:func:`qt_ros.qtransformer.trainer.train`), evaluates it with
``qt-ros eval``'s code (:mod:`qt_ros.evaluation.closed_loop_eval`), and writes
``comparison.md`` (success with its Wilson 95 % interval, steps, wall times) and
``comparison.png`` (the rates with their intervals), plus each variant's checkpoint and eval.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# name -> (TrainConfig overrides, LearnerConfig overrides)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "qt": ({}, {}),
    "bc": ({"bc_episodes": "successes"}, {"algo": "bc"}),
    "bc-all": ({"bc_episodes": "all"}, {"algo": "bc"}),
    "qt-no-conservative": ({}, {"conservative_weight": 0.0}),
    "qt-no-mc-bound": ({}, {"mc_lower_bound": False}),
    "qt-3-step": ({"n_step": 3}, {}),
}
DEFAULT_VARIANTS = ("qt", "bc", "bc-all", "qt-no-conservative", "qt-no-mc-bound")


class ComparisonError(ValueError):
    """Options the comparison cannot run with (the text says which and what to do)."""


def parse_variants(text: str) -> list[str]:
    """``"qt,bc"`` -> ``["qt", "bc"]``; unknown names are an error that lists the known ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ComparisonError(f"unknown or no variants {unknown or text!r}; choose from "
                              f"{', '.join(VARIANTS)}")
    return names


def train_config(name: str, base, out: Path):
    """``base`` (a TrainConfig) with the variant's changes, writing into ``out/name``."""
    train_changes, learner_changes = VARIANTS[name]
    learner = dataclasses.replace(base.learner, **learner_changes)
    return dataclasses.replace(base, out=str(out / name), learner=learner, **train_changes)


def compare(base_train, base_eval, variants: Sequence[str], out: Path,
            progress: Callable[[str], None] = print) -> list[dict]:
    """Train and evaluate every variant; returns one row per variant (also in the files)."""
    from qt_ros.evaluation import eval_report
    from qt_ros.qtransformer.trainer import algorithm_summary, train

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in variants:
        cfg = train_config(name, base_train, out)
        progress(f"[{name}] training: {algorithm_summary(cfg)['label']}")
        start = time.monotonic()
        checkpoint = train(cfg)
        train_s = time.monotonic() - start
        eval_cfg = dataclasses.replace(base_eval, checkpoint=str(checkpoint),
                                       out=str(out / name / "eval"))
        progress(f"[{name}] evaluating on {eval_cfg.episodes} unseen seeds")
        summary = eval_report.evaluate(eval_cfg)
        rows.append(_row(name, algorithm_summary(cfg)["label"], cfg, summary, train_s))
        progress(f"[{name}] {rows[-1]['successes']}/{rows[-1]['episodes']} successes")
        write_table(rows, out)  # after each variant: a long run shows its progress on disk
    plot(rows, out / "comparison.png")
    return rows


def _row(name: str, label: str, cfg, summary: dict, train_s: float) -> dict:
    return {"variant": name, "label": label, "steps": cfg.steps, "preset": cfg.preset,
            "episodes": summary["episodes"], "successes": summary["successes"],
            "success_rate": summary["success_rate"], "interval_95": summary["wilson_95"],
            "mean_steps": summary["steps"]["mean"], "termination": summary["termination"],
            "train_s": round(train_s, 1), "eval_s": summary["wall_s"], "checkpoint": cfg.out}


def write_table(rows: list[dict], out: Path) -> Path:
    """``comparison.md`` (a Markdown table) and ``comparison.json`` in ``out``."""
    lines = ["| variant | trained as | success | 95 % interval | mean steps | train s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["interval_95"]
        lines.append(f"| {r['variant']} | {r['label']} | {r['successes']}/{r['episodes']} "
                     f"({100 * r['success_rate']:.0f} %) | {100 * low:.0f}-{100 * high:.0f} % "
                     f"| {_fmt(r['mean_steps'])} | {r['train_s']:.0f} |")
    (out / "comparison.json").write_text(json.dumps(rows, indent=1) + "\n")
    path = out / "comparison.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def plot(rows: list[dict], path: Path) -> Path:
    """Success rate of each variant with its Wilson 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2, 3.5))
    rates = [r["success_rate"] for r in rows]
    errors = [[r["success_rate"] - r["interval_95"][0] for r in rows],
              [r["interval_95"][1] - r["success_rate"] for r in rows]]
    ax.bar(range(len(rows)), rates, yerr=errors, capsize=4, color="tab:blue")
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("closed-loop success (95 % interval)")
    ax.set_title(f"{rows[0]['episodes'] if rows else 0} unseen seeds per variant")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
