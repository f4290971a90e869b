"""Choosing the checkpoint to deploy by closed-loop success on held-out scenes.

The last weights of a training run are one draw: on the demo's data, eight first rounds of the
same recipe scored 72-95 of 100 and one 1 of 100 (docs/design.md 7.1, sessions 10-12), and
successive checkpoints of one run differ by tens of points. ``qt-ros train --keep-every N`` keeps
a copy of the weights every N steps (``steps/<step>/``); :func:`select` runs each candidate
through ``qt-ros eval``'s closed loop on the same validation seeds and :func:`deploy` copies the
best one (most successes; a tie goes to the later candidate, the one trained longer) where the
robot loads it. Validation seeds must differ from the seeds a result is reported on: the best
of several noisy scores is biased upwards.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from qt_ros.common.files import atomic_write_text
from qt_ros.qtransformer.checkpoint import CONFIG, WEIGHTS, read_config

CHECKPOINT_FILES = (WEIGHTS, CONFIG)


class SelectionError(ValueError):
    """Candidates that cannot be chosen among (the text says which and why)."""


def is_checkpoint(path: Path) -> bool:
    return all((path / name).is_file() for name in CHECKPOINT_FILES)


def expand_candidates(paths: list[str | Path], last: int = 0) -> list[Path]:
    """The candidate checkpoints, in order: a run directory with kept copies (``steps/``, from
    ``qt-ros train --keep-every``) stands for its copies in step order (the last ``last`` of
    them when ``last`` > 0); any other path must be a checkpoint itself."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        kept = sorted(p for p in (path / "steps").glob("*") if is_checkpoint(p)) \
            if (path / "steps").is_dir() else []
        if kept:
            out += kept[-last:] if last > 0 else kept
        elif is_checkpoint(path):
            out.append(path)
        else:
            raise SelectionError(f"{path} is neither a checkpoint (model.safetensors and "
                                 f"config.json) nor a run directory with kept copies in "
                                 f"steps/ (qt-ros train --keep-every N)")
    if not out:
        raise SelectionError("no candidate checkpoints given")
    return out


def choose(rows: list[dict]) -> int:
    """Index of the row with the most successes; a tie goes to the later row."""
    return max(range(len(rows)), key=lambda k: (rows[k]["successes"], k))


def select(candidates: list[Path], config, out: Path,
           progress: Callable[[dict], None] | None = None,
           on_episode: Callable[[object], None] | None = None) -> dict:
    """Evaluate every candidate with ``config`` (an EvalConfig; its checkpoint is replaced) on
    the same seeds; writes ``out/<k>-<name>/eval.json`` per candidate and
    ``out/selection.json``; returns the selection (``rows``, ``chosen``, ``chosen_index``)."""
    from qt_ros.evaluation import eval_report

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, candidate in enumerate(candidates):
        where = out / f"{k:02d}-{candidate.name}"
        cfg = dataclasses.replace(config, checkpoint=str(candidate), out=str(where), video=0)
        summary = eval_report.evaluate(cfg, on_episode)
        row = {"checkpoint": str(candidate), "step": read_config(candidate)["step"],
               "model_id": summary["model_id"],
               **{key: summary[key] for key in ("successes", "episodes", "success_rate",
                                                "wilson_95", "termination", "wall_s")}}
        rows.append(row)
        if progress is not None:
            progress(row)
    index = choose(rows)
    selection = {"rows": rows, "chosen_index": index, "chosen": rows[index],
                 "seeds": [config.seed_offset, config.seed_offset + config.episodes - 1],
                 "task": config.task, "rule": "most successes; a tie goes to the later "
                                              "candidate"}
    atomic_write_text(out / "selection.json", json.dumps(selection, indent=1) + "\n")
    return selection


def deploy(checkpoint: Path, target: Path) -> Path:
    """Copy the checkpoint's weights and config to ``target`` (replacing a checkpoint there):
    written beside it and renamed, so ``target`` never holds a half-copied checkpoint."""
    target = Path(target)
    if target.exists() and not is_checkpoint(target):
        raise SelectionError(f"{target} exists and is not a checkpoint; refusing to replace it")
    fresh = target.with_name(target.name + ".partial")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        shutil.copy2(checkpoint / name, fresh / name)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    fresh.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def selection_text(selection: dict) -> str:
    """One line per candidate, the chosen one marked."""
    lines = [f"closed-loop success on '{selection['task']}', seeds {selection['seeds'][0]}.."
             f"{selection['seeds'][1]}:"]
    for k, row in enumerate(selection["rows"]):
        low, high = row["wilson_95"]
        mark = "  <- chosen" if k == selection["chosen_index"] else ""
        lines.append(f"  step {row['step']:>7}: {row['successes']}/{row['episodes']} "
                     f"({100 * low:.0f}-{100 * high:.0f} %)  {row['checkpoint']}{mark}")
    return "\n".join(lines)
