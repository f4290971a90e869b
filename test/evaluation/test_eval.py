"""``qt-ros eval`` as a user runs it: the scripted demonstrator through the policy node's loop
succeeds (the anchor), a checkpoint's episodes are reported seed by seed, the same seeds give the
same outcomes in one process or two, and mistakes are messages (exit status 2), not tracebacks.
Real MuJoCo, real checkpoints, the real control loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qt_ros.control.policy_config import PolicyConfig
from qt_ros.evaluation.closed_loop_eval import run_episodes
from qt_ros.evaluation.eval_config import EvalConfig, resolve_setup
from qt_ros.evaluation.sim_output import SimOutput
from qt_ros.qtransformer.checkpoint import make_random_checkpoint
from qt_ros.qtransformer.tokenizer import ActionTokenizer
from qt_ros.sim.simulator import JOINT_NAMES

REPO = Path(__file__).resolve().parents[2]


def _eval(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qt_ros.cli", "eval", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random tiny model for the simulated robot: its 5 joint positions as the state, the
    default action space (terminate included)."""
    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset="tiny",
                                  state_dim=len(JOINT_NAMES), seed=3)


def test_demonstrator_through_the_policy_loop_succeeds(tmp_path):
    out = tmp_path / "demo_eval"
    result = _eval("--policy", "demonstrator", "--episodes", "20", "--noise", "0",
                   "--video", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "eval.json").read_text())
    assert summary["episodes"] == 20 and len(summary["per_seed"]) == 20
    assert summary["success_rate"] >= 0.9, summary["per_seed"]
    low, high = summary["wilson_95"]
    assert low <= summary["success_rate"] <= high
    assert [r["seed"] for r in summary["per_seed"]] == list(range(100_000, 100_020))
    # The script ends its episodes itself once the block is up.
    assert summary["termination"].get("terminate", 0) >= 18
    assert summary["settings"]["policy_config"]["state_source"] == "joint_states"
    assert (out / "eval.png").stat().st_size > 5000
    gifs = list(out.glob("episode_100000_*.gif"))
    assert len(gifs) == 1 and gifs[0].read_bytes()[:6] == b"GIF89a"
    assert "success" in result.stdout and "Wilson" in result.stdout


def test_a_checkpoint_is_reported_seed_by_seed(tmp_path, tiny_checkpoint):
    out = tmp_path / "ckpt_eval"
    result = _eval(str(tiny_checkpoint), "--episodes", "3", "--max-steps", "8",
                   "--seed-offset", "500", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "eval.json").read_text())
    assert 0.0 <= summary["success_rate"] <= 1.0
    assert summary["model_id"].startswith("tiny@0#")
    rows = summary["per_seed"]
    assert [r["seed"] for r in rows] == [500, 501, 502]
    for r in rows:
        assert 1 <= r["steps"] <= 8 and r["reason"] in ("terminate", "max_steps")
        assert isinstance(r["success"], bool)
    assert sum(summary["termination"].values()) == 3
    assert (out / "eval.png").exists()


def test_two_workers_give_the_outcomes_of_one(tmp_path):
    # Without a terminate dimension every episode runs all its steps: 4 distinct trajectories.
    checkpoint = make_random_checkpoint(tmp_path / "no_terminate", preset="tiny",
                                        tokenizer=ActionTokenizer(terminate=None),
                                        state_dim=len(JOINT_NAMES), seed=5)

    def rows(workers: int) -> list[dict]:
        config = EvalConfig(checkpoint=str(checkpoint), episodes=4, max_steps=12,
                            seed_offset=700, workers=workers, noise=0.003,
                            out=str(tmp_path / f"w{workers}"))
        outcomes = run_episodes(config, resolve_setup(config))
        return [{k: v for k, v in o.row().items() if k != "seconds"} for o in outcomes]

    one, two = rows(1), rows(2)
    assert one == two
    assert all(r["steps"] == 12 and r["reason"] == "max_steps" for r in one)
    # The harness's own stop at the step budget is not the policy's hold or warning.
    assert all(r["holds"] == 0 and r["warnings"] == [] for r in one)
    # The episodes differ from each other (the comparison above can fail).
    assert len({tuple(r["hand_m"]) for r in one}) == 4


def test_the_step_budget_follows_the_task_as_collection_does(tmp_path):
    """``place`` demonstrations take up to ~53 steps: without --max-steps an episode there may
    run 80 steps (as ``qt-ros sim collect`` records them), on ``lift`` 50."""
    checkpoint = make_random_checkpoint(tmp_path / "no_terminate", preset="tiny",
                                        tokenizer=ActionTokenizer(terminate=None),
                                        state_dim=len(JOINT_NAMES), seed=5)
    for task, steps in (("place", 80), ("lift", 50)):
        config = EvalConfig(checkpoint=str(checkpoint), episodes=1, task=task,
                            out=str(tmp_path / task))
        outcome, = run_episodes(config, resolve_setup(config))
        assert (outcome.steps, outcome.reason) == (steps, "max_steps"), task


def test_sim_output_applies_the_nodes_arithmetic():
    """twist = delta / period (policy node), delta = twist * period (sim node), gripper mapped
    linearly onto the configured positions; a hold moves nothing and keeps the gripper."""
    config = PolicyConfig(gripper_open_position=1.0, gripper_closed_position=0.0)
    layout = config.resolve(ActionTokenizer(), 0)
    output = SimOutput(config, layout, sim_period=0.1)
    output.command(np.array([0.01, -0.02, 0.005, 0.05, 0.0, 0.0]), 0.25, None)
    action = output.take_action()
    np.testing.assert_allclose(action, [0.01, -0.02, 0.005, 0, 0, 0, 0.75], rtol=0, atol=1e-15)
    output.hold(None)
    np.testing.assert_array_equal(output.take_action(), [0, 0, 0, 0, 0, 0, 0.75])
    np.testing.assert_array_equal(output.take_action(), [0, 0, 0, 0, 0, 0, 0.75])


def _bad(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_bad_inputs_are_clear_errors(tmp_path):
    _bad(_eval(str(tmp_path / "nope"), "--episodes", "2"), "nope", "does not exist")
    _bad(_eval("--policy", "demonstrator", "--episodes", "0"), "--episodes must be >= 1")
    _bad(_eval("--policy", "demonstrator", "--episodes", "-3"), "--episodes must be >= 1")
    _bad(_eval("--episodes", "2"), "no checkpoint given")
    other_state = make_random_checkpoint(tmp_path / "state7", preset="tiny", state_dim=7)
    _bad(_eval(str(other_state), "--episodes", "2"), "state of 7 values", "joint_states")
    names = ["a0", "a1", "a2", "a3"]
    other_actions = make_random_checkpoint(
        tmp_path / "actions", preset="tiny", state_dim=5,
        tokenizer=ActionTokenizer.uniform(names, [-1.0] * 4, [1.0] * 4, 16))
    _bad(_eval(str(other_actions), "--episodes", "2"), "not in the checkpoint's action dimensions")


def test_bench_eval_prints_episodes_per_minute():
    result = subprocess.run([sys.executable, "-m", "qt_ros.cli", "bench", "eval", "--presets",
                             "tiny", "--episodes", "2", "--max-steps", "5", "--workers", "1"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    tiny = report["presets"]["tiny"]
    assert tiny["episodes"] == 2 and tiny["steps"] == 10 and tiny["terminated"] == 0
    assert tiny["episodes_per_minute"] > 0
