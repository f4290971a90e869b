"""``python -m qt_ros.demo`` (``make demo``): options from the recipe, the summary, and the
whole loop with tiny counts through real ROS 2 processes."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys

import numpy as np
import pytest
import yaml

from qt_ros.data.dataset_reader import DatasetStore
from qt_ros.demo.__main__ import check_recipe
from qt_ros.demo.child_processes import DemoError
from qt_ros.demo.closed_loop import Demo
from qt_ros.demo.demo_summary import (
    plot_summary,
    rate_text,
    success,
    summary_markdown,
    summary_text,
)
from qt_ros.demo.recipe import DEFAULT, Recipe

from conftest import REPO


def run_demo(env: dict[str, str], *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qt_ros.demo", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_options_are_refused_before_anything_starts(ros_env, tmp_path):
    result = run_demo(ros_env, "--demos", "0", "--out", str(tmp_path / "run"), timeout=60)
    assert result.returncode == 2 and "--demos must be >= 1" in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_options_default_to_the_recipe(ros_env):
    result = run_demo(ros_env, "--help", timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option, value in (("--demos", DEFAULT.demos), ("--train-steps", DEFAULT.train_steps),
                          ("--ros-episodes", DEFAULT.ros_episodes),
                          ("--eval-episodes", DEFAULT.eval_episodes)):
        assert option in text and f"(default: {value})" in text
    assert check_recipe(DEFAULT) == ""  # the shipped recipe passes the demo's own checks
    assert "--improve-keep-every >= 1" in check_recipe(
        dataclasses.replace(DEFAULT, improve_keep_every=0))


def test_make_compare_and_the_full_demo_compare_on_the_same_mix(ros_env, tmp_path):
    """`make compare` and `make demo --full` run one pipeline: the same mix, tokenizer and
    training config; the demo adds only its recipe's budget to `qt-ros compare`."""
    result = subprocess.run(["make", "--no-print-directory", "compare",
                             f"COMPARE_DIR={tmp_path / 'runs'}",
                             "COMPARE_ARGS=--dry-run --steps 2000 --episodes 30"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    made = [shlex.split(line)[1:] for line in result.stdout.splitlines()
            if line.startswith("qt-ros ")]
    assert [m[0] for m in made] == ["sim", "convert", "compare"], result.stdout
    collect, convert, compare = made
    assert collect[collect.index("--demos") + 1] == "20"  # 8 % demonstrations
    assert collect[collect.index("--replays") + 1] == "230"
    assert convert[convert.index("--tokenizer") + 1].endswith(
        "config/train/tokenizer_terminate_first.json")
    assert compare[compare.index("--config") + 1].endswith("config/train/noisy_mix.yaml")
    assert compare[-4:] == ["--steps", "2000", "--episodes", "30"]  # passed through

    ran: list[list[str]] = []
    demo = Demo(DEFAULT, out=tmp_path / "demo", workers=2)  # the recipe collects with 2 too
    demo.paths["comparison"] = tmp_path / "runs"
    demo._cli = lambda *args: ran.append(list(args)) or 0
    with pytest.raises(DemoError, match="the comparison failed"):  # nothing ran: no table
        demo.compare()
    assert ran[:2] == made[:2]
    assert ran[2][:len(compare) - 4] == compare[:-4]
    budget = ran[2][len(compare) - 4:]
    assert budget[budget.index("--steps") + 1] == str(DEFAULT.train_steps)
    assert budget[budget.index("--episodes") + 1] == str(DEFAULT.eval_episodes)


def test_episode_budget_follows_the_task():
    """place demonstrations take up to ~53 steps: its policy episodes get 80, lift's 50, as
    qt-ros sim collect and qt-ros eval give them; --max-steps still wins."""
    assert (DEFAULT.task, DEFAULT.decisions) == ("lift", 50)
    place = Recipe(task="place")
    assert check_recipe(place) == "" and place.decisions == 80
    assert Recipe(task="place", max_steps=30).decisions == 30
    assert "--max-steps" in check_recipe(Recipe(max_steps=-1))


def _synthetic_summary() -> dict:
    metrics = [{"step": s, "loss": 1.0 / s, "td_loss": 0.5 / s, "q_taken": 0.1 * s / 100,
                "target": 0.12 * s / 100} for s in range(50, 1001, 50)]
    rows = [{"episode_id": f"e{k}", "outcome": "success" if k % 4 else "failure",
             "ended_by": "terminate", "seconds": 3.0, "steps": 30} for k in range(30)]
    return {
        "task": "lift",
        "recipe": {**{k: getattr(DEFAULT, k) for k in ("preset", "batch_size", "lr")},
                   "train_args": ("--alpha", "1.0")},
        "collected": {"demo": {"episodes": 200, "successes": 198}},
        "dataset": {"episodes": 230, "steps": 7000, "image_size": [64, 64],
                    "by_source": {"demonstration": 200, "autonomous": 30}},
        "ros": {**success(rows), "ended_by_terminate": 30, "rows": rows},
        "appended": 30,
        "eval": {"round1": {**success(81, 100), "seeds": [100000, 100099]},
                 "round2": {**success(88, 100), "seeds": [100000, 100099]}},
        "training": {"round1": {"steps": 1000, "final_loss": 0.001, "metrics": metrics},
                     "round2": {"steps": 300, "final_loss": 0.002, "metrics": metrics[:6]}},
        "comparison": None,
        "seconds": {"collect": 70.0, "train": 720.0, "total": 1500.0},
        "paths": {k: f"/runs/x/{k}" for k in ("out", "episodes", "dataset", "checkpoint",
                                               "policy_episodes", "checkpoint_round2")},
    }


def test_success_rates_come_with_their_wilson_interval():
    r = success(24, 30)
    assert r["success_rate"] == 0.8 and r["wilson_95"] == [0.6269, 0.9049]
    assert rate_text(r) == "24/30 = 80 % (95 % interval 63-90 %)"
    assert rate_text(success(0, 0)) == "not run"


def test_summary_markdown_reports_ros_and_both_rounds_with_intervals():
    text = summary_markdown(_synthetic_summary())
    assert "| Q-Transformer through ROS" in text and "22/30 = 73 % (95 % interval" in text
    assert "81/100 = 81 % (95 % interval 72-87 %)" in text
    assert "88/100 = 88 % (95 % interval" in text
    assert "Second round: +7 points on the same seeds." in text
    assert "| train | 720 |" in text  # phase times
    assert "`--alpha 1.0`" in text  # the recipe's extra training options


def test_summary_says_how_ros_episodes_failed_and_names_the_collapse():
    s = _synthetic_summary()  # 8 failures of 30, each ended by the policy's terminate
    text = summary_markdown(s)
    assert "8 of 30 episodes through ROS failed: 8 ended by the policy's terminate" in text
    assert "collapsed" not in text
    rows = [{**r, "outcome": "failure"} for r in s["ros"]["rows"]]
    rows[0]["ended_by"] = "step limit"
    s["ros"] = {**success(rows), "rows": rows}
    for text in (summary_markdown(s), " ".join(summary_text(s).split())):
        assert "30 of 30 episodes through ROS failed: 29 ended by the policy's terminate, 1 by" \
            in text
        assert "collapsed onto terminating" in text and "--seed 1" in text


def test_summary_names_the_deployed_kept_copy_and_the_scores_that_chose_it():
    s = _synthetic_summary()
    assert "Deployed" not in summary_markdown(s)  # no selection: the last weights ran
    s["selection"] = {"seeds": [50000, 50029], "chosen_step": 14000, "rows": [
        {"step": step, "successes": wins, "episodes": 30, "wilson_95": [0.0, 1.0]}
        for step, wins in ((12000, 21), (14000, 29), (16000, 25), (17737, 29))]}
    s["paths"]["policy"] = "/runs/x/policy"
    for text in (summary_markdown(s), " ".join(summary_text(s).split())):
        assert "at step 14000, chosen among its last 4 kept copies" in text
        assert "validation scenes 50000..50029" in text
        assert "12000: 21/30, 14000: 29/30, 16000: 25/30, 17737: 29/30" in text
    assert "deployed after the first round: `/runs/x/policy`" in summary_markdown(s)


def test_summary_says_what_the_loop_deploys_after_the_second_round():
    s = _synthetic_summary()
    assert "after the second round:" not in summary_markdown(s)
    rows = [{"step": step, "successes": wins, "episodes": 30, "wilson_95": [0.0, 1.0],
             "incumbent": first} for step, wins, first in (
                 (16000, 28, True), (2000, 22, False), (3667, 25, False))]
    s["selection_round2"] = {"seeds": [60000, 60029], "chosen_step": 16000,
                             "chosen_incumbent": True, "rows": rows,
                             "test": {"challenger_index": 2, "wins": 1, "losses": 4,
                                      "p_value": 0.96875, "corrected_p": 1.0,
                                      "significance": 0.05, "replaced": False}}
    s["eval"]["deployed"] = s["eval"]["round1"]
    s["paths"]["policy_round2"] = "/runs/x/policy_round2"
    for text in (summary_markdown(s), " ".join(summary_text(s).split())):
        assert ("Deployed after the second round: the first round's policy, kept, chosen on "
                "validation scenes 60000..60029 between the first round's policy (28/30) and "
                "the second round's last 2 kept copies (step: successes; 2000: 22/30, "
                "3667: 25/30). The best copy succeeded on 1 scene(s) where the first round's "
                "policy failed and failed on 4 where it succeeded: sign test p = 0.97, 1 for 2 "
                "copies; a copy replaces the first round's policy at p <= 0.05.") in text
    assert "| deployed after the second round (chosen: see below) | 81/100" in \
        summary_markdown(s)
    assert "after the second round: `/runs/x/policy_round2`" in summary_markdown(s)
    s["selection_round2"]["chosen_step"], s["selection_round2"]["chosen_incumbent"] = 3667, False
    assert "the second round's weights at step 3667, chosen" in summary_markdown(s)


def test_summary_png_has_rates_curves_and_frame_strips(tmp_path):
    s = _synthetic_summary()
    frames = [np.full((64, 64, 3), 10 * k, dtype=np.uint8) for k in range(20)]
    png = plot_summary(s, tmp_path / "summary.png", {"ROS success": frames,
                                                     "ROS failure": frames[:7]})
    bare = plot_summary(s, tmp_path / "bare.png")
    assert png.stat().st_size > 30_000
    from PIL import Image

    assert Image.open(png).size[1] > Image.open(bare).size[1]  # the strips are there


@pytest.mark.slow
@pytest.mark.ros
def test_demo_runs_the_whole_loop_with_tiny_counts(ros_env, tmp_path):
    out = tmp_path / "run"
    result = run_demo(ros_env, "--demos", "3", "--ros-episodes", "2", "--eval-episodes", "2",
                      "--train-steps", "10", "--improve-steps", "5", "--improve-episodes", "2",
                      "--improve-warmup-steps", "3", "--encoder", "hash",
                      "--max-steps", "8", "--keep-every", "4", "--select-last", "2",
                      "--select-episodes", "2", "--improve-keep-every", "2", "--out", str(out),
                      "--domain-id", ros_env["ROS_DOMAIN_ID"])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for phase in ("collect", "convert", "train", "choose checkpoint", "policy through ROS",
                  "append policy episodes", "evaluate", "record policy episodes",
                  "train round 2", "choose after round 2", "evaluate round 2", "summary"):
        assert f"/12 {phase}\n" in result.stdout
    assert "Q-T success through ROS:" in result.stdout and "95 % interval" in result.stdout
    s = json.loads((out / "summary.json").read_text())
    # the policy through ROS: two episodes, each a bag labelled by the simulator
    assert s["ros"]["episodes"] == 2 and len(s["ros"]["wilson_95"]) == 2
    assert all(r["outcome"] in ("success", "failure") for r in s["ros"]["rows"])
    assert all(1 <= r["steps"] <= 9 for r in s["ros"]["rows"])  # the step budget, not a clock
    catalog = json.loads((out / "policy_episodes" / "catalog.json").read_text())["episodes"]
    assert len(catalog) == 2
    assert all(e["source"] == "autonomous" and e["labels"] for e in catalog.values())
    # two more recorded in-process for the second round, labelled the same way
    fast = json.loads((out / "policy_episodes_fast" / "catalog.json").read_text())["episodes"]
    assert sorted(e["outcome"] in ("success", "failure") and e["source"]
                  for e in fast.values()) == ["autonomous"] * 2
    # ... all appended to the dataset of the collected demonstrations
    store = DatasetStore(out / "dataset")
    assert sorted(e["source"] for e in store.episodes) == ["autonomous"] * 4 + [
        "demonstration"] * 3
    assert store.image_size == (64, 64)
    # the deployed checkpoint: the better of the first round's last two kept copies (steps 8
    # and 10) on validation scenes of their own; it ran through ROS and started round 2
    chosen = s["selection"]
    assert [r["step"] for r in chosen["rows"]] == [8, 10] and chosen["seeds"] == [50000, 50001]
    kept = out / "checkpoint" / "steps" / f"{chosen['chosen_step']:07d}"
    assert (out / "policy" / "model.safetensors").read_bytes() == \
        (kept / "model.safetensors").read_bytes()
    assert f"at step {chosen['chosen_step']}, chosen among" in (out / "summary.md").read_text()
    # the second round started from the deployed checkpoint; both measured on the same seeds
    assert s["training"]["round1"]["steps"] == 10 and s["training"]["round2"]["steps"] == 5
    round2 = yaml.safe_load((out / "checkpoint_round2" / "train_config.yaml").read_text())
    assert round2["init"] == str(out / "policy") and round2["warmup_steps"] == 3
    assert s["eval"]["round1"]["seeds"] == s["eval"]["round2"]["seeds"]
    assert min(s["eval"]["round1"]["seeds"]) >= 100_000  # not the data's scenes
    # after round 2 the choice runs again on scenes of its own: the first round's policy
    # against round 2's last two kept copies (steps 4 and 5); the winner is policy_round2/,
    # and the evaluation reports it beside round 2's last weights
    again = s["selection_round2"]
    assert [(r["step"], r["incumbent"]) for r in again["rows"]] == [
        (chosen["chosen_step"], True), (4, False), (5, False)]
    # the first round's policy stays unless a copy beats it by the paired sign test
    test = again["test"]
    assert again["chosen_incumbent"] is not test["replaced"]
    assert not test["replaced"] or (test["corrected_p"] <= 0.05 and test["wins"] > 0)
    assert again["seeds"] == [60000, 60001]
    winner = (out / "policy" if again["chosen_incumbent"] else
              out / "checkpoint_round2" / "steps" / f"{again['chosen_step']:07d}")
    assert (out / "policy_round2" / "model.safetensors").read_bytes() == \
        (winner / "model.safetensors").read_bytes()
    assert s["eval"]["deployed"]["seeds"] == s["eval"]["round1"]["seeds"]
    assert "Deployed after the second round: " in (out / "summary.md").read_text()
    assert s["appended"] == 4 and s["recorded"]["episodes"] == 2
    assert "95 % interval" in (out / "summary.md").read_text()
    assert (out / "summary.png").stat().st_size > 20_000
    assert (out / "policy_episode.gif").stat().st_size > 1_000
