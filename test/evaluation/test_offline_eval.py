"""``qt-ros eval --offline CHECKPOINT DATASET``: TD error, Q against the Monte Carlo return of
successful and failed episodes, the greedy action's agreement with the demonstrations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qt_ros.cli import main as qt_ros_main
from qt_ros.data.synthetic_dataset import EpisodeSpec, write_dataset
from qt_ros.data.torch_dataset import QTransformerDataset
from qt_ros.evaluation.offline_eval import evaluate
from qt_ros.qtransformer.checkpoint import load_model, load_policy, make_random_checkpoint
from qt_ros.qtransformer.instruction_encoder import make_encoder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    data = write_dataset(root / "data", [EpisodeSpec(6, "success", "demonstration"),
                                         EpisodeSpec(5, "success", "demonstration",
                                                     instruction="stack the cubes"),
                                         EpisodeSpec(7, "failure"), EpisodeSpec(4, "success")])
    checkpoint = make_random_checkpoint(root / "ckpt", preset="tiny", image_size=(32, 32))
    return data, checkpoint


def test_offline_report_per_outcome_and_dimension(setup, tmp_path, capsys):
    data, checkpoint = setup
    assert qt_ros_main(["eval", "--offline", str(checkpoint), str(data), "--out",
                        str(tmp_path)]) == 0
    assert "TD error" in capsys.readouterr().out
    report = json.loads((tmp_path / "offline_eval.json").read_text())
    assert report["steps"] == 22 and np.isfinite(report["td_error"])
    q = report["q_vs_return"]
    assert (q["success"]["steps"], q["failure"]["steps"]) == (15, 7)
    assert q["failure"]["mean_return"] == 0.0 and q["success"]["mean_return"] > 0.5
    assert 0.0 <= q["success"]["mean_q"] <= 1.0
    agreement = report["agreement"]
    assert agreement["reference"] == "demonstration episodes" and agreement["steps"] == 11
    assert list(agreement["per_dimension"]) == ["x", "y", "z", "roll", "pitch", "yaw",
                                                "gripper", "terminate"]
    assert (tmp_path / "offline_eval.png").stat().st_size > 5000


def test_the_greedy_action_judged_is_the_policy_s(setup):
    """Agreement is measured on the action the policy node would take: the first step of each
    episode (history = its first frame repeated) gives the Policy's bins."""
    data, checkpoint = setup
    model, _, encoder_config, _ = load_model(checkpoint)
    dataset = QTransformerDataset(data, history=model.cfg.history,
                                  instruction_embeddings=make_encoder(encoder_config).encode_batch)
    _, steps = evaluate(model, dataset)
    policy = load_policy(checkpoint)
    for k, episode in enumerate(dataset.episodes):
        first = int(dataset._offsets[k])
        policy.reset(dataset.instructions[int(episode["instruction"])])
        frame = dataset[first]["frames"][-1].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(policy.act(frame).bins, steps["greedy"][first])


def test_a_dataset_that_does_not_fit_is_a_clear_error(setup, tmp_path, capsys):
    data, _ = setup
    other = make_random_checkpoint(tmp_path / "ckpt", preset="tiny", image_size=(48, 48))
    assert qt_ros_main(["eval", "--offline", str(other), str(data), "--out",
                        str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not fit checkpoint" in err and "Traceback" not in err
    assert qt_ros_main(["eval", "--offline", str(other)]) == 2
    assert "needs a checkpoint and a dataset" in capsys.readouterr().err
