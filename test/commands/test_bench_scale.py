"""`qt-ros bench train --end-to-end` (data loading from a converted dataset) and `qt-ros bench
act --runtime both` (PyTorch against ONNX Runtime) print one JSON object (tiny sizes)."""

from __future__ import annotations

import json

import pytest

from qt_ros.cli import main

pytestmark = pytest.mark.usefixtures("keep_thread_count")


def _bench(capsys, *argv):
    assert main(["bench", *argv]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_bench_train_end_to_end_from_a_converted_dataset(capsys):
    result = _bench(capsys, "train", "--preset", "tiny", "--frames", "2", "--image-size", "32",
                    "--batch-size", "4", "--steps", "3", "--warmup", "1", "--threads", "1",
                    "--end-to-end", "--workers", "0")
    e2e = result["end_to_end"]
    assert e2e["samples_per_s"] > 0 and e2e["synthetic_batch_samples_per_s"] > 0
    assert e2e["ratio"] == pytest.approx(e2e["samples_per_s"]
                                         / e2e["synthetic_batch_samples_per_s"], rel=0.01)
    assert "converted by qt-ros convert (240 steps)" in e2e["dataset"]


def test_bench_act_compares_pytorch_and_onnx_runtime(capsys):
    result = _bench(capsys, "act", "--preset", "tiny", "--frames", "2", "--image-size", "32",
                    "--dims", "3", "--bins", "16", "--steps", "5", "--warmup", "2",
                    "--threads", "1", "--runtime", "both")
    runtimes = result["runtimes"]
    assert set(runtimes) == {"torch", "onnx"}
    for timing in runtimes.values():
        assert 0 < timing["step_ms"]["p50"] <= timing["step_ms"]["p99"]
    assert result["onnx_vs_torch_p50"] == pytest.approx(
        runtimes["onnx"]["step_ms"]["p50"] / runtimes["torch"]["step_ms"]["p50"], rel=0.01)
