"""`qt-ros bench act` and `qt-ros bench train` run and print one JSON object (tiny sizes)."""

from __future__ import annotations

import json

import pytest

from qt_ros.cli import main

pytestmark = pytest.mark.usefixtures("keep_thread_count")


def _bench(capsys, *argv):
    assert main(["bench", *argv]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    return json.loads(out[0])


def test_bench_act_prints_latency(capsys):
    result = _bench(capsys, "act", "--preset", "tiny", "--frames", "3", "--image-size", "32",
                    "--dims", "4", "--bins", "16", "--steps", "5", "--warmup", "2",
                    "--camera", "48x64", "--threads", "1", "--state-dim", "2")
    assert result["benchmark"] == "act" and result["preset"] == "tiny"
    assert result["frames"] == 3 and result["image_size"] == [32, 32]
    assert result["action_dims"] == 4 and result["bins"] == 16 and result["state_dim"] == 2
    assert result["parameters"] > 0 and result["camera"] == "48x64"
    assert 0 < result["step_ms"]["p50"] <= result["step_ms"]["p99"]


def test_bench_train_prints_throughput(capsys):
    result = _bench(capsys, "train", "--preset", "tiny", "--frames", "2", "--image-size", "32",
                    "--dims", "3", "--bins", "8", "--batch-size", "2", "--steps", "2",
                    "--warmup", "1", "--threads", "1")
    assert result["benchmark"] == "train" and result["batch_size"] == 2
    assert result["samples_per_s"] > 0 and result["s_per_step"] > 0
    assert abs(result["samples_per_s"] * result["s_per_step"] - 2) < 0.05
    assert result["image_shift"] == 0


def test_bench_train_times_the_augmented_step(capsys):
    result = _bench(capsys, "train", "--preset", "tiny", "--frames", "1", "--image-size", "32",
                    "--dims", "3", "--bins", "8", "--batch-size", "2", "--steps", "2",
                    "--warmup", "1", "--threads", "1", "--image-shift", "2")
    assert result["image_shift"] == 2 and result["samples_per_s"] > 0
