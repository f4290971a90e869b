"""``qt-ros select`` as a user runs it: the kept copies of a run act in the real closed loop on
the same validation seeds, the one with the most successes is chosen (a tie: the later one) and
copied where the robot loads it; mistakes are messages (exit status 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qt_ros.evaluation.checkpoint_selection import (
    SelectionError,
    choose,
    choose_against_incumbent,
    deploy,
    sign_test,
)
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


def test_sign_test_counts_the_seeds_where_the_two_policies_differ():
    incumbent = [True, True, False, False, True, False]
    challenger = [True, False, True, True, True, True]
    assert sign_test(incumbent, challenger) == {"wins": 3, "losses": 1, "p_value": 5 / 16}
    assert sign_test([False] * 5, [True] * 5)["p_value"] == 1 / 32
    assert sign_test([True] * 4, [True] * 4) == {"wins": 0, "losses": 0, "p_value": 1.0}
    with pytest.raises(SelectionError, match="differ in length"):
        sign_test([True], [True, False])


def _rows(*outcomes):
    return [{"successes": sum(o)} for o in outcomes], [list(o) for o in outcomes]


def test_the_incumbent_stays_unless_a_challenger_is_better_by_the_test():
    held = [True] * 28 + [False] * 2
    # near the ceiling: 30/30 against 28/30 is 2 wins, 0 losses, p = 0.25: the incumbent stays
    rows, outcomes = _rows(held, [True] * 30)
    index, test = choose_against_incumbent(rows, outcomes, 0.05)
    assert index == 0 and not test["replaced"] and test["p_value"] == 0.25
    # a tie stays with the incumbent whatever the significance
    rows, outcomes = _rows(held, held[::-1])
    assert choose_against_incumbent(rows, outcomes, 1.0)[0] == 0
    # a weak incumbent (10/30) and a challenger that adds 12 scenes and loses none: replaced
    weak = [True] * 10 + [False] * 20
    better = [True] * 22 + [False] * 8
    rows, outcomes = _rows(weak, weak, better)
    index, test = choose_against_incumbent(rows, outcomes, 0.05)
    assert (index, test["challenger_index"], test["wins"], test["losses"]) == (2, 2, 12, 0)
    assert test["replaced"] and test["corrected_p"] == pytest.approx(2 / 4096)
    # 5 wins and 0 losses: p = 1/32 passes alone, not after Bonferroni over 2 challengers
    five = [True] * 15 + [False] * 15
    rows, outcomes = _rows(weak, weak, five)
    assert choose_against_incumbent(rows, outcomes, 0.05)[0] == 0
    assert choose_against_incumbent(rows[:1] + rows[2:], outcomes[:1] + outcomes[2:],
                                     0.05)[0] == 1


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


def test_an_incumbent_acts_on_the_same_seeds_and_stays_when_nothing_beats_it(tmp_path):
    run = tmp_path / "run"
    for k, step in enumerate((2000, 4000)):
        make_random_checkpoint(run / "steps" / f"{step:07d}", preset="tiny",
                               state_dim=len(JOINT_NAMES), seed=20 + k)
    held = make_random_checkpoint(tmp_path / "policy", preset="tiny",
                                  state_dim=len(JOINT_NAMES), seed=30)
    weights = (held / "model.safetensors").read_bytes()
    result = _select(str(run), "--incumbent", str(held), "--episodes", "2", "--max-steps", "4",
                     "--workers", "2", "--out", str(tmp_path / "sel"), "--deploy", str(held))
    assert result.returncode == 0, result.stderr[-3000:]
    selection = json.loads((tmp_path / "sel" / "selection.json").read_text())
    rows = selection["rows"]
    assert [(Path(r["checkpoint"]).name, r["incumbent"]) for r in rows] == [
        ("policy", True), ("0002000", False), ("0004000", False)]
    test = selection["test"]
    # untrained policies do not lift the block: no scene tells them apart, nothing replaced
    assert [r["successes"] for r in rows] == [0, 0, 0]
    assert (test["wins"], test["losses"], test["replaced"]) == (0, 0, False)
    assert selection["chosen_index"] == 0
    assert (held / "model.safetensors").read_bytes() == weights
    assert "(incumbent)  <- chosen" in result.stdout
    assert "does not replace the incumbent" in result.stdout
    bad = _select(str(run), "--incumbent", str(tmp_path / "nope"), "--episodes", "1")
    assert bad.returncode == 2 and "--incumbent" in bad.stderr and "not a checkpoint" in bad.stderr
    bad = _select(str(run), "--significance", "0", "--episodes", "1")
    assert bad.returncode == 2 and "--significance must be in (0, 1]" in bad.stderr
