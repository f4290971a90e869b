"""Behaviour cloning (``qt-ros train --algo bc``): the same network and greedy decoder as the
Q-learner, a cross-entropy on the data's bins, filtered to successful episodes by default."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qt_ros.cli import main as qt_ros_main
from qt_ros.data.torch_dataset import QTransformerDataset
from qt_ros.episodes.synthetic import write_episode
from qt_ros.qtransformer.behavior_cloning import LOGIT_ANCHOR_WEIGHT, behavior_cloning_loss
from qt_ros.qtransformer.checkpoint import load_policy, read_config, trained_by
from qt_ros.qtransformer.instruction_encoder import EncoderConfig, make_encoder
from qt_ros.qtransformer.learner import Learner, LearnerConfig
from qt_ros.qtransformer.model import QTransformer
from qt_ros.qtransformer.model_config import model_config
from qt_ros.qtransformer.trainer import TrainConfig, data_loader

INSTRUCTION = "pick up the red cube"
COMMON = ["--preset", "tiny", "--encoder", "hash", "--workers", "0", "--seed", "0"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster, and leaves the other core to parallel tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _convert(root: Path, outcomes: list[str]) -> Path:
    for i, outcome in enumerate(outcomes):
        write_episode(root / "bags", f"ep{i}", 8, outcome=outcome, pattern="texture", seed=i)
    assert qt_ros_main(["convert", str(root / "bags"), "--out", str(root / "data"),
                        "--image-size", "32", "--quiet"]) == 0
    return root / "data"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two successful and two failed episodes of 8 steps with random bins."""
    return _convert(tmp_path_factory.mktemp("bc"), ["success", "failure", "success", "failure"])


@pytest.fixture(scope="module")
def bc_checkpoint(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bc_ckpt") / "ckpt"
    assert qt_ros_main(["train", str(dataset), "--out", str(out), "--algo", "bc", "--steps",
                        "150", "--batch-size", "16", "--lr", "3e-3", "--log-every", "10",
                        *COMMON]) == 0
    return out


# ---------------------------------------------------------------------------- the arithmetic


def test_loss_is_the_cross_entropy_over_valid_bins():
    """Hand-computed: a 3-bin and a 2-of-3-bin dimension; the invalid bin counts for nothing."""
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.5, -0.5, 9.0]]])           # [B=1, d=2, K=3]
    valid = torch.tensor([[True, True, True], [True, True, False]])
    bins = torch.tensor([[1, 0]])
    loss, ce, anchor, accuracy = behavior_cloning_loss(logits, bins, valid)
    lse0 = math.log(math.e + math.e ** 2 + 1)
    lse1 = math.log(math.e ** 0.5 + math.e ** -0.5)
    assert ce.item() == pytest.approx(((lse0 - 2.0) + (lse1 - 0.5)) / 2, rel=1e-6)
    assert anchor.item() == pytest.approx((lse0 ** 2 + lse1 ** 2) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(ce.item() + LOGIT_ANCHOR_WEIGHT * anchor.item(), rel=1e-6)
    np.testing.assert_array_equal(accuracy.numpy(), [1.0, 1.0])  # bin 2 (9.0) is not valid
    _, _, _, accuracy = behavior_cloning_loss(logits, torch.tensor([[0, 1]]), valid)
    np.testing.assert_array_equal(accuracy.numpy(), [0.0, 0.0])


def test_the_anchor_keeps_logits_where_the_sigmoid_orders_bins_like_them():
    """Cross-entropy is blind to a shift of every logit; in float32 the sigmoid the policy acts
    on ties every bin above ~16.6 (the decoder then takes bin 0, not the most likely bin). The
    anchor is not blind: its gradient pulls a shifted dimension back down."""
    logits = torch.tensor([[[0.0, 3.0, 1.0]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    bins = torch.tensor([[1]])
    shifted = (logits + 20.0).requires_grad_()
    _, ce, _, _ = behavior_cloning_loss(logits, bins, valid)
    loss, ce_shifted, _, _ = behavior_cloning_loss(shifted, bins, valid)
    assert ce_shifted.item() == pytest.approx(ce.item(), abs=1e-5)
    assert torch.sigmoid(shifted).argmax().item() == 0                       # all round to 1.0
    loss.backward()
    assert (shifted.grad.sum() > 0).item()            # gradient descent lowers the shift


# ---------------------------------------------------------------------------- the learner


def _tiny_model(bins=(32, 32, 2)):
    torch.manual_seed(0)
    return QTransformer(model_config("tiny", action_bins=bins, instruction_dim=16))


def test_bc_learner_needs_no_target_network_nor_next_observations():
    model = _tiny_model()
    learner = Learner(model, LearnerConfig(algo="bc", lr=1e-3), dimension_names=["x", "y", "t"])
    assert learner.target is None
    g = torch.Generator().manual_seed(0)
    batch = {"frames": torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8, generator=g),
             "instruction_embedding": torch.randn(4, 16, generator=g),
             "state": torch.zeros(4, 0),
             "action_bins": torch.tensor([[3, 4, 1], [5, 6, 0], [7, 8, 1], [9, 10, 0]])}
    first = learner.update(batch)
    assert set(first) >= {"loss", "cross_entropy", "logit_anchor", "accuracy", "accuracy_x",
                          "accuracy_y", "accuracy_t", "grad_norm"}
    for _ in range(30):
        last = learner.update(batch)
    assert last["cross_entropy"] < 0.5 * first["cross_entropy"]
    assert last["accuracy"] == 1.0


# ---------------------------------------------------------------------------- the command


def _metrics(checkpoint: Path) -> list[dict]:
    return [json.loads(line) for line in (checkpoint / "metrics.jsonl").read_text().splitlines()]


def test_bc_lowers_its_loss_and_its_accuracy_on_the_data_rises(bc_checkpoint):
    rows = _metrics(bc_checkpoint)
    assert len(rows) == 15 and all(np.isfinite(r["loss"]) for r in rows)
    first, last = rows[0], rows[-1]
    assert last["cross_entropy"] < 0.7 * first["cross_entropy"]
    # The first row averages steps 1-10, already well above chance (~1/256 on the 256-bin
    # dimensions); the data's ceiling is ~0.875 (bins that differ between episodes in the
    # same state), so the rise is from ~0.7-0.8 to near that ceiling.
    assert last["accuracy"] > first["accuracy"] + 0.08
    assert last["accuracy"] > 0.85
    # The terminate dimension (2 valid bins of 256) starts near log 2, not log 256.
    assert first["cross_entropy"] < math.log(256)
    assert {f"accuracy_{n}" for n in ("x", "gripper", "terminate")} <= set(last)
    assert (bc_checkpoint / "training.png").stat().st_size > 1000


def test_bc_checkpoint_records_its_algorithm(bc_checkpoint):
    config = read_config(bc_checkpoint)
    assert trained_by(config) == {"algo": "bc", "label": "BC (successes)",
                                  "switches": {"bc_episodes": "successes"}}
    assert config["extra"]["learner"]["algo"] == "bc"


def test_bc_policy_acts_on_the_trained_argmax(bc_checkpoint):
    """``load_policy`` acts on sigmoid(logits) with the Q-learner's decoder; the bins it chooses
    are the argmax of the logits BC trained, teacher-forced on its own choices."""
    policy = load_policy(bc_checkpoint)
    model = policy.model
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    embedding = torch.from_numpy(np.array(policy.encoder.encode(INSTRUCTION)))[None]
    policy.reset(INSTRUCTION)
    for t, frame in enumerate(frames):
        result = policy.act(frame)
        window = [frames[0]] * max(0, policy.history - t - 1) + frames[max(0, t + 1 -
                                                                          policy.history):t + 1]
        x = torch.from_numpy(np.stack(window)).permute(0, 3, 1, 2)[None]
        with torch.no_grad():
            logits = model(x, embedding, None, torch.from_numpy(result.bins)[None],
                           bounded=False)[0]
        logits = logits.masked_fill(~model.valid_mask, float("-inf"))
        np.testing.assert_array_equal(result.bins, logits.argmax(-1).numpy())
        assert (logits.max(-1).values < 10).all()      # far below where the sigmoid saturates
        np.testing.assert_allclose(result.q_values, torch.sigmoid(logits.max(-1).values),
                                   rtol=1e-5)


def _drawn_outcomes(dataset_dir: Path, bc_episodes: str, algo: str = "bc") -> set[str]:
    """The outcomes of the steps in the batches ``qt-ros train`` would train on, told apart by
    their Monte Carlo return (> 0 only in a successful episode)."""
    cfg = TrainConfig(str(dataset_dir), "unused", steps=40, batch_size=8, workers=0,
                      bc_episodes=bc_episodes, learner=LearnerConfig(algo=algo))
    data = QTransformerDataset(dataset_dir, history=2,
                               instruction_embeddings=make_encoder(
                                   EncoderConfig(kind="hash", dim=16)).encode_batch)
    returns = torch.cat([batch["mc_return"] for batch in data_loader(cfg, data,
                                                                     torch.device("cpu"))])
    assert len(returns) == 40 * 8
    return {"success" if r > 0 else "failure" for r in returns.tolist()}


def test_filtered_bc_never_samples_a_failed_episode(dataset):
    assert _drawn_outcomes(dataset, "successes") == {"success"}
    assert _drawn_outcomes(dataset, "all") == {"success", "failure"}
    assert _drawn_outcomes(dataset, "successes", algo="qt") == {"success", "failure"}


def test_filtered_bc_without_a_success_is_a_clear_error(tmp_path, capsys):
    data = _convert(tmp_path, ["failure", "failure"])
    args = ["train", str(data), "--out", str(tmp_path / "ckpt"), "--algo", "bc", "--steps",
            "2", "--batch-size", "2", *COMMON]
    assert qt_ros_main(args) == 2
    err = capsys.readouterr().err
    assert "has no successful episode (2 failure)" in err and "--bc-episodes all" in err
    assert "Traceback" not in err
    assert qt_ros_main([*args, "--bc-episodes", "all"]) == 0
    assert trained_by(read_config(tmp_path / "ckpt"))["label"] == "BC (all)"


# ---------------------------------------------------------------------------- the ablations


@pytest.mark.parametrize("flags, label, switches", [
    ([], "Q-T", {}),
    (["--alpha", "0"], "Q-T (alpha 0)", {"conservative_weight": 0.0}),
    (["--no-mc-lower-bound"], "Q-T (no MC bound)", {"mc_lower_bound": False}),
    (["--n-step", "3"], "Q-T (n-step 3)", {"n_step": 3}),
    (["--conservative-radius", "0.2", "--gamma", "0.9"], "Q-T (radius 0.2, gamma 0.9)",
     {"conservative_radius": 0.2, "gamma": 0.9}),
    (["--image-shift", "2"], "Q-T (shift 2 px)", {"image_shift": 2}),
])
def test_each_ablation_trains_end_to_end_and_is_recorded(dataset, tmp_path, flags, label,
                                                         switches):
    out = tmp_path / "ckpt"
    assert qt_ros_main(["train", str(dataset), "--out", str(out), "--steps", "6",
                        "--batch-size", "4", "--log-every", "2", *COMMON, *flags]) == 0
    config = read_config(out)
    assert trained_by(config) == {"algo": "qt", "label": label, "switches": switches}
    rows = _metrics(out)
    assert all(np.isfinite(r["loss"]) for r in rows)
    # No conservative term means exactly that; with it, the term is there.
    assert all((r["conservative_loss"] == 0) == ("--alpha" in flags) for r in rows)
    policy = load_policy(out)
    policy.reset(INSTRUCTION)
    assert len(policy.act(np.zeros((32, 32, 3), np.uint8)).bins) == 8
