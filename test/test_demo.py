"""``python -m qt_ros.demo`` (``make demo``): the whole loop with tiny counts, real processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qt_ros.data.dataset_reader import DatasetStore

from conftest import REPO


def run_demo(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qt_ros.demo", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_options_are_refused_before_anything_starts(ros_env, tmp_path):
    result = run_demo(ros_env, "--demos", "0", "--out", str(tmp_path / "run"), timeout=60)
    assert result.returncode == 2 and "--demos must be >= 1" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.ros
def test_demo_runs_the_closed_loop_with_tiny_counts(ros_env, tmp_path):
    out = tmp_path / "run"
    result = run_demo(ros_env, "--demos", "2", "--episodes", "1", "--train-steps", "10",
                      "--train-minutes", "1", "--encoder", "hash", "--max-steps", "10",
                      "--failure-rate", "0", "--out", str(out),
                      "--domain-id", ros_env["ROS_DOMAIN_ID"])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for phase in ("1/6 demonstrations", "3/6 train", "4/6 policy episodes", "6/6 summary"):
        assert phase in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["demonstrations"]["episodes"] == 2
    assert summary["demonstrations"]["successes"] == 2  # no scripted mistakes asked for
    assert summary["policy"]["episodes"] == 1
    assert summary["training"]["steps"] == 10
    for row in summary["episodes"]["demonstration"] + summary["episodes"]["policy"]:
        assert row["outcome"] in ("success", "failure")  # labelled by the success detector
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert (out / "summary.png").stat().st_size > 10_000
    assert "policy after training" in (out / "summary.txt").read_text()
    # the demonstrations and the policy's episode, converted into one dataset
    store = DatasetStore(out / "dataset")
    assert sorted(e["source"] for e in store.episodes) == ["autonomous", "demonstration",
                                                           "demonstration"]
    assert store.state_dim == 5 and store.image_size == (64, 64)
    catalog = json.loads((out / "demonstrations" / "catalog.json").read_text())["episodes"]
    assert all(e["outcome"] == "success" and e["source"] == "demonstration"
               for e in catalog.values())
