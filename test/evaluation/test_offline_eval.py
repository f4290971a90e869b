"""``qt-ros eval --offline CHECKPOINT DATASET``: TD error, Q against the Monte Carlo return of
successful and failed episodes, the greedy action's agreement with the demonstrations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qt_ros.cli import main as qt_ros_main
from qt_ros.data.synthetic_dataset import EpisodeSpec, write_dataset
from qt_ros.data.torch_dataset import QTransformerDataset
from qt_ros.evaluation.offline_eval import evaluate, phases
from qt_ros.qtransformer.checkpoint import load_model, load_policy, make_random_checkpoint
from qt_ros.qtransformer.instruction_encoder import make_encoder
from qt_ros.qtransformer.tokenizer import ActionTokenizer


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
    out = capsys.readouterr().out
    assert "TD error" in out
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
    split = report["phases"]
    assert sum(row["steps"] for row in split.values()) == 11
    assert "gripper open:" in out or "gripper closed:" in out
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


def test_per_phase_a_policy_that_reaches_wrong_and_carries_right_is_told_apart():
    """The split by the data's gripper command shows a reach that points away from the data
    while the carry follows it, which the overall agreement would average away."""
    tok = ActionTokenizer()
    x, y, grip = (tok.names.index(n) for n in ("x", "y", "gripper"))
    data = np.full((6, tok.num_dims), 127)
    data[:, x], data[:, y] = [255, 0, 255, 255, 0, 127], [255, 255, 0, 255, 0, 140]
    data[:, grip] = [0, 0, 0, 255, 255, 255]                   # reaching, then carrying
    greedy = data.copy()
    greedy[:3, x], greedy[:3, y] = 255 - data[:3, x], 255 - data[:3, y]   # reach: opposite
    split = phases({"bins": data, "greedy": greedy}, np.ones(6, bool), tok)
    reach, carry = split["gripper open"], split["gripper closed"]
    assert (reach["steps"], carry["steps"]) == (3, 3)
    assert reach["direction"]["cosine"] == pytest.approx(-1, abs=0.01)
    assert reach["agreement"]["x"] == 0 and carry["agreement"]["x"] == 1
    # the last step barely moves (x at the middle, y 13 bins off): not counted
    assert carry["direction"] == {"steps": 2, "cosine": pytest.approx(1)}
    assert phases({"bins": data[:, :2], "greedy": greedy[:, :2]}, np.ones(6, bool),
                  ActionTokenizer(["x", "y"], [-1, -1], [1, 1], [256, 256], None)) is None
