"""Choosing the checkpoint to deploy by closed-loop success on held-out scenes.

The last weights of a training run are one draw: on the demo's data, eight first rounds of the
same recipe scored 72-95 of 100 and one 1 of 100 (docs/design.md 7.1, sessions 10-12), and
successive checkpoints of one run differ by tens of points. ``qt-ros train --keep-every N`` keeps
a copy of the weights every N steps (``steps/<step>/``); :func:`select` runs each candidate
through ``qt-ros eval``'s closed loop on the same validation seeds and :func:`deploy` copies the
best one (most successes; a tie goes to the later candidate, the one trained longer) where the
robot loads it. Validation seeds must differ from the seeds a result is reported on: the best
of several noisy scores is biased upwards.

With an *incumbent* (the policy in service, e.g. before a second round of training) the choice
is a decision to replace it, and a few validation episodes cannot tell policies near the
ceiling apart (docs/design.md 7.1, session 13). The incumbent acts on the same seeds and stays
unless the best challenger succeeds more often and wins an exact one-sided sign test on the
seeds where exactly one of the two succeeds (McNemar's test for paired outcomes), with its
p-value multiplied by the number of challengers (Bonferroni: the best of several is tested).
"""

from __future__ import annotations

import dataclasses
import json
import math
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


def sign_test(incumbent: list[bool], challenger: list[bool]) -> dict:
    """Exact one-sided sign test of paired outcomes (the same seeds, in the same order):
    ``wins`` (seeds only the challenger succeeds on), ``losses`` (only the incumbent) and
    ``p_value``, the probability of at least ``wins`` of the ``wins + losses`` differing seeds
    going to the challenger if both policies were equally good."""
    if len(incumbent) != len(challenger):
        raise SelectionError(f"paired outcomes differ in length: {len(incumbent)} and "
                             f"{len(challenger)} episodes")
    wins = sum(c and not i for i, c in zip(incumbent, challenger, strict=True))
    losses = sum(i and not c for i, c in zip(incumbent, challenger, strict=True))
    n = wins + losses
    p = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n
    return {"wins": wins, "losses": losses, "p_value": p}


def choose_against_incumbent(rows: list[dict], outcomes: list[list[bool]],
                             significance: float) -> tuple[int, dict]:
    """(chosen index, the test) for ``rows[0]`` the incumbent and ``rows[1:]`` challengers,
    ``outcomes[k]`` row k's success per seed. The best challenger (``choose``) replaces the
    incumbent only with more successes and a sign-test p-value, times the number of
    challengers, at most ``significance``; otherwise the incumbent stays (index 0)."""
    if len(rows) < 2:
        raise SelectionError("an incumbent needs at least one challenger")
    best = 1 + choose(rows[1:])
    test = sign_test(outcomes[0], outcomes[best])
    corrected = min(1.0, test["p_value"] * (len(rows) - 1))
    replaced = rows[best]["successes"] > rows[0]["successes"] and corrected <= significance
    return (best if replaced else 0), {"challenger_index": best, **test,
                                       "corrected_p": corrected, "significance": significance,
                                       "replaced": replaced}


def select(candidates: list[Path], config, out: Path,
           progress: Callable[[dict], None] | None = None,
           on_episode: Callable[[object], None] | None = None,
           incumbent: Path | None = None, significance: float = 0.05) -> dict:
    """Evaluate every candidate with ``config`` (an EvalConfig; its checkpoint is replaced) on
    the same seeds; writes ``out/<k>-<name>/eval.json`` per candidate and
    ``out/selection.json``; returns the selection (``rows``, ``chosen``, ``chosen_index``).
    With ``incumbent`` it is evaluated first (row 0, ``"incumbent": true``) and stays unless
    ``choose_against_incumbent`` says otherwise (the selection's ``test``)."""
    from qt_ros.evaluation import eval_report

    if not 0.0 < significance <= 1.0:
        raise SelectionError(f"significance must be in (0, 1], got {significance}")
    out.mkdir(parents=True, exist_ok=True)
    if incumbent is not None:
        candidates = [Path(incumbent), *candidates]
    rows, outcomes = [], []
    for k, candidate in enumerate(candidates):
        where = out / f"{k:02d}-{candidate.name}"
        cfg = dataclasses.replace(config, checkpoint=str(candidate), out=str(where), video=0)
        summary = eval_report.evaluate(cfg, on_episode)
        row = {"checkpoint": str(candidate), "step": read_config(candidate)["step"],
               "model_id": summary["model_id"],
               **{key: summary[key] for key in ("successes", "episodes", "success_rate",
                                                "wilson_95", "termination", "wall_s")}}
        if incumbent is not None:
            row["incumbent"] = k == 0
        rows.append(row)
        outcomes.append([bool(r["success"]) for r in summary["per_seed"]])
        if progress is not None:
            progress(row)
    selection = {"rows": rows, "seeds": [config.seed_offset,
                                         config.seed_offset + config.episodes - 1],
                 "task": config.task}
    if incumbent is None:
        index = choose(rows)
        selection["rule"] = "most successes; a tie goes to the later candidate"
    else:
        index, selection["test"] = choose_against_incumbent(rows, outcomes, significance)
        selection["rule"] = (f"the incumbent (row 0) stays unless the challenger with the most "
                             f"successes has more and wins a one-sided sign test on the seeds "
                             f"where they differ, p x {len(rows) - 1} challenger(s) <= "
                             f"{significance}")
    selection.update(chosen_index=index, chosen=rows[index])
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
        held = " (incumbent)" if row.get("incumbent") else ""
        lines.append(f"  step {row['step']:>7}: {row['successes']}/{row['episodes']} "
                     f"({100 * low:.0f}-{100 * high:.0f} %)  {row['checkpoint']}{held}{mark}")
    test = selection.get("test")
    if test:
        lines.append(decision_text(selection))
    return "\n".join(lines)


def decision_text(selection: dict) -> str:
    """The replacement decision in one sentence (a selection made with an incumbent)."""
    test, rows = selection["test"], selection["rows"]
    best = rows[test["challenger_index"]]
    verdict = "replaces the incumbent" if test["replaced"] else "does not replace the incumbent"
    return (f"the best challenger (step {best['step']}) {verdict}: it succeeded on "
            f"{test['wins']} seed(s) where the incumbent failed and failed on {test['losses']} "
            f"where it succeeded (sign test p = {test['p_value']:.3g}, x {len(rows) - 1} "
            f"challenger(s): {test['corrected_p']:.3g}; replace at <= {test['significance']})")
