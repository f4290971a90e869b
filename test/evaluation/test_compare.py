"""``qt-ros compare``: every variant trained on one dataset and evaluated on the same seeds, one
table. Tiny budgets: this checks the plumbing a user relies on (labels, intervals, files), not
which method wins."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def qt_ros(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "qt_ros.cli", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    episodes, data = root / "episodes", root / "data"
    qt_ros("sim", "collect", "--out", str(episodes), "--demos", "2", "--replays", "1",
           "--workers", "1")
    qt_ros("convert", str(episodes), "--out", str(data), "--mapping",
           str(episodes / "convert_mapping.yaml"), "--workers", "1")
    return data


def test_compare_trains_and_evaluates_each_variant_into_one_table(dataset, tmp_path):
    out = tmp_path / "cmp"
    config = tmp_path / "train.yaml"        # every variant gets its model from the file
    config.write_text("history: 1\nmodel:\n  stem_stride: 8\nsteps: 99\n")
    result = qt_ros("compare", str(dataset), "--out", str(out), "--variants", "qt,bc",
                    "--steps", "4", "--batch-size", "4", "--episodes", "2", "--workers", "1",
                    "--config", str(config))
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["variant"] for r in rows] == ["qt", "bc"]
    assert rows[0]["label"].startswith("Q-T") and rows[1]["label"] == "BC (successes)"
    for r in rows:
        assert r["episodes"] == 2 and 0 <= r["successes"] <= 2
        low, high = r["interval_95"]
        assert 0 <= low <= r["success_rate"] <= high <= 1
        assert (out / r["variant"] / "eval" / "eval.json").is_file()
        model = json.loads((out / r["variant"] / "config.json").read_text())["model"]
        assert model["history"] == 1 and model["stem_stride"] == 8
        assert "steps: 4" in (out / r["variant"] / "train_config.yaml").read_text()
    table = (out / "comparison.md").read_text()
    assert "| qt |" in table and "| bc |" in table and table == result.stdout.split("wrote")[0]
    assert (out / "comparison.png").stat().st_size > 0


def test_unknown_variant_is_a_clear_error(dataset, tmp_path):
    result = qt_ros("compare", str(dataset), "--out", str(tmp_path / "x"), "--variants",
                    "qt,dqn", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "dqn" in result.stderr and "bc-all" in result.stderr
