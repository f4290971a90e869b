"""``qt-ros select`` as a user runs it: the kept copies of a run act in the real closed loop on
the same validation seeds, the one with the most successes is chosen (a tie: the later one) and
copied where the robot loads it; mistakes are messages (exit status 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from qt_ros.evaluation.checkpoint_selection import choose, deploy
from qt_ros.qtransformer.checkpoint import load_policy, make_random_checkpoint
from qt_ros.sim.simulator import JOINT_NAMES

REPO = Path(__file__).resolve().parents[2]


def _select(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qt_ros.cli", "select", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


def test_choose_takes_the_most_successes_and_the_later_of_a_tie():
    rows = [{"successes": s} for s in (3, 7, 5, 7, 2)]
    assert choose(rows) == 3
    assert choose([{"successes": 0}]) == 0


def test_kept_copies_act_on_the_same_seeds_and_the_chosen_one_is_deployed(tmp_path):
    run = tmp_path / "run"
    for k, step in enumerate((2000, 4000, 6000)):
        make_random_checkpoint(run / "steps" / f"{step:07d}", preset="tiny",
                               state_dim=len(JOINT_NAMES), seed=10 + k)
    (run / "steps" / "0008000").mkdir()  # an unfinished copy (no config.json) is no candidate
    policy = tmp_path / "policy"
    result = _select(str(run), "--last", "2", "--episodes", "3", "--max-steps", "6",
                     "--workers", "2", "--out", str(tmp_path / "sel"), "--deploy", str(policy))
    assert result.returncode == 0, result.stderr[-3000:]
    selection = json.loads((tmp_path / "sel" / "selection.json").read_text())
    rows = selection["rows"]
    assert [Path(r["checkpoint"]).name for r in rows] == ["0004000", "0006000"]
    assert selection["seeds"] == [50000, 50002]  # validation scenes apart from eval's 100000..
    for k, row in enumerate(rows):
        evaluated = json.loads((tmp_path / "sel" / f"{k:02d}-{Path(row['checkpoint']).name}"
                                / "eval.json").read_text())
        assert [r["seed"] for r in evaluated["per_seed"]] == [50000, 50001, 50002]
        assert evaluated["successes"] == row["successes"] <= 3
    chosen = Path(selection["chosen"]["checkpoint"])
    assert selection["chosen"]["successes"] == max(r["successes"] for r in rows)
    assert (policy / "model.safetensors").read_bytes() == \
        (chosen / "model.safetensors").read_bytes()
    assert load_policy(policy).model_id == load_policy(chosen).model_id
    assert "<- chosen" in result.stdout and str(chosen) in result.stdout
    assert not list(tmp_path.glob("policy.*"))  # no partial or old copy left beside it


def test_deploy_replaces_a_checkpoint_but_never_other_files(tmp_path):
    first = make_random_checkpoint(tmp_path / "a", preset="tiny", seed=1,
                                   state_dim=len(JOINT_NAMES))
    second = make_random_checkpoint(tmp_path / "b", preset="tiny", seed=2)
    target = deploy(first, tmp_path / "policy")
    deploy(second, target)
    assert (target / "model.safetensors").read_bytes() == \
        (second / "model.safetensors").read_bytes()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    result = _select(str(first), "--episodes", "1", "--max-steps", "2", "--deploy", str(notes),
                     "--out", str(tmp_path / "sel"))
    # refused before any episode runs, with the reason
    assert result.returncode == 2 and "not a checkpoint; refusing" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "sel").exists()
    assert (notes / "todo.txt").read_text() == "keep me"


def test_bad_candidates_are_clear_errors(tmp_path):
    empty = tmp_path / "empty_run"
    (empty / "steps").mkdir(parents=True)
    for args, words in (((str(tmp_path / "nope"),), ("nope", "--keep-every")),
                        ((str(empty),), ("empty_run", "neither a checkpoint")),
                        ((str(empty), "--last", "-1"), ("--last must be >= 0",))):
        result = _select(*args, "--episodes", "1")
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        for word in words:
            assert word in result.stderr, result.stderr
