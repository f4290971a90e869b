"""``qt-ros train`` for long runs: a YAML config with overrides, an exact resume after a crash,
several datasets, the Q range of the data, TensorBoard and a progress bar that tells the truth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from qt_ros.cli import main as qt_ros_main
from qt_ros.data.synthetic_dataset import EpisodeSpec, write_dataset
from qt_ros.qtransformer.checkpoint import make_random_checkpoint, read_config

REPO = Path(__file__).resolve().parents[2]
COMMON = ["--preset", "tiny", "--encoder", "hash", "--batch-size", "4", "--workers", "0"]
# What the learner computes (the rest of a metric line is wall time and speed).
TIMING = {"time", "samples_per_s", "data_wait_s"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    a = write_dataset(root / "a", [EpisodeSpec(8, "success"), EpisodeSpec(6, "failure"),
                                   EpisodeSpec(7, "success", "demonstration")])
    b = write_dataset(root / "b", [EpisodeSpec(5, "failure"), EpisodeSpec(6, "success")], seed=1)
    return a, b


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _train_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qt_ros.cli", "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture
def one_thread(keep_thread_count):
    """Bitwise equality needs one thread in every process: with two, the embedding's backward
    sums in an order that depends on scheduling (measured: 1e-7 differences under load)."""
    import torch

    torch.set_num_threads(1)


@pytest.mark.usefixtures("one_thread")
def test_a_run_killed_and_resumed_equals_the_run_never_interrupted(data, tmp_path):
    args = [str(data[0]), str(data[1]), "--weights", "1", "2", "--steps", "16",
            "--save-every", "4", "--log-every", "2", "--lr", "1e-3", *COMMON]
    whole = tmp_path / "whole"
    assert qt_ros_main(["train", *args, "--out", str(whole)]) == 0

    cut = tmp_path / "cut"
    proc = _train_process(*args, "--out", str(cut))
    state = cut / "last" / "training_state.json"
    deadline = time.monotonic() + 240
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)           # a crash: no chance to save anything more
    proc.wait()
    saved = json.loads(state.read_text())["step"]
    assert 4 <= saved < 16, f"the run got to step {saved} before the kill"

    assert qt_ros_main(["train", "--resume", str(cut)]) == 0
    before, after = load_file(whole / "model.safetensors"), load_file(cut / "model.safetensors")
    for name, value in before.items():
        np.testing.assert_array_equal(value, after[name], err_msg=name)
    target = [load_file(run / "last" / "training_state.safetensors") for run in (whole, cut)]
    for name in (k for k in target[0] if k.startswith(("target/", "optimizer/"))):
        np.testing.assert_array_equal(target[0][name], target[1][name], err_msg=name)
    assert _metrics(cut) == _metrics(whole)
    assert read_config(cut)["step"] == 16


def test_sigterm_saves_and_the_resumed_run_goes_on(data, tmp_path):
    run = tmp_path / "run"
    proc = _train_process(str(data[0]), "--out", str(run), "--steps", "400", "--save-every",
                          "1000", *COMMON)
    deadline = time.monotonic() + 240
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)            # a cluster's preemption
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    saved = json.loads((run / "last" / "training_state.json").read_text())["step"]
    assert 0 < saved < 400 and f"continue with --resume {run}" in err
    assert qt_ros_main(["train", "--resume", str(run), "--steps", str(saved + 2)]) == 0
    assert read_config(run)["step"] == saved + 2


def test_config_file_with_overrides_and_the_saved_config(data, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(f"dataset: [{data[0]}, {data[1]}]\nweights: [3, 1]\n"
                      f"out: {tmp_path / 'run'}\npreset: tiny\nencoder: hash\nsteps: 50\n"
                      f"batch_size: 4\nworkers: 0\nlearner: {{lr: 0.002, tau: 0.5}}\n"
                      f"model: {{d_model: 16}}\n")
    assert qt_ros_main(["train", "--config", str(config), "--steps", "3", "--tau", "0.25"]) == 0
    run = tmp_path / "run"
    saved = (run / "train_config.yaml").read_text()
    config_json = read_config(run)
    assert config_json["step"] == 3                                 # the option won
    assert config_json["model"]["d_model"] == 16                    # the file's model field
    learner = config_json["extra"]["learner"]
    assert (learner["lr"], learner["tau"]) == (0.002, 0.25)
    assert config_json["extra"]["train"]["weights"] == [3.0, 1.0]
    # The saved file repeats the run.
    assert qt_ros_main(["train", "--config", str(run / "train_config.yaml"), "--out",
                        str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "train_config.yaml").read_text().split("\n", 1)[1] \
        .replace(str(tmp_path / "again"), "X") == saved.split("\n", 1)[1] \
        .replace(str(run), "X")


def test_a_typo_in_the_config_file_is_a_clear_error(data, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(f"dataset: {data[0]}\nout: {tmp_path / 'run'}\nstesp: 10\n")
    assert qt_ros_main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown option(s) ['stesp']" in err and "Traceback" not in err


def test_q_range_follows_rewards_above_one_and_a_range_too_small_is_an_error(tmp_path, capsys):
    big = write_dataset(tmp_path / "big", [EpisodeSpec(5, "success", reward=2.0),
                                           EpisodeSpec(4, "failure")])
    run = tmp_path / "run"
    assert qt_ros_main(["train", str(big), "--out", str(run), "--steps", "2", *COMMON]) == 0
    model = read_config(run)["model"]
    assert (model["q_min"], model["q_max"]) == (0.0, 2.0)

    assert qt_ros_main(["train", str(big), "--out", str(tmp_path / "x"), "--steps", "2",
                        "--q-max", "1", *COMMON]) == 2
    err = capsys.readouterr().err
    assert "returns in the data span [0, 2]" in err and "outside the Q range [0, 1]" in err
    init = make_random_checkpoint(tmp_path / "init", preset="tiny", image_size=(32, 32))
    assert qt_ros_main(["train", str(big), "--out", str(tmp_path / "y"), "--steps", "2",
                        "--init", str(init), *COMMON]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {init}" in err and "train a new model" in err


def test_tensorboard_scalars_and_a_progress_bar_that_ends_where_the_run_stops(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "qt_ros.cli", "train", str(data[0]), "--out", str(run),
         "--steps", "100000", "--max-minutes", "0.1", "--log-every", "2", *COMMON],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-3000:]
    step = read_config(run)["step"]
    assert 0 < step < 100000
    bars = [part for part in result.stderr.replace("\r", "\n").splitlines()
            if part.startswith("train:")]
    assert f"{step}/{step}" in bars[-1], bars[-1]        # not "/100000": the time limit rules
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/td_loss", "train/conservative_loss", "train/q_taken",
                "train/mc_bound_active", "train/grad_norm", "speed/lr",
                "speed/samples_per_s", "speed/data_wait_s"):
        assert tag in tags, tag
    assert events.Scalars("train/loss")[-1].step == step
