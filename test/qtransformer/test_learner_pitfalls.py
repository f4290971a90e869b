"""Each bug found in public Q-Transformer re-implementations has a test that fails if it returns.

Pitfalls (docs/design.md): reward ignored in the last-dimension target; done flags with no effect;
acting with an argmax one bin off from the trained one; "greedy" acting that samples; a
regularizer on logits that grows with batch size; MC return as one constant instead of per
transition; "n-step" that sums no rewards. Plus: the target network is evaluated in eval mode.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qt_ros.qtransformer.instruction_encoder import EncoderConfig, make_encoder
from qt_ros.qtransformer.learner import Learner, LearnerConfig
from qt_ros.qtransformer.model import QTransformer
from qt_ros.qtransformer.model_config import model_config
from qt_ros.qtransformer.policy import Policy
from qt_ros.qtransformer.tokenizer import ActionTokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster, and leaves the other core to parallel tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TOKENIZER = ActionTokenizer.uniform(["x", "y", "z", "stop"], [-1, -1, -1, 0], [1, 1, 1, 1],
                                    num_bins=32, terminate="stop")
ENCODER = EncoderConfig(kind="hash", dim=16)


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = model_config("tiny", action_bins=tuple(TOKENIZER.bins), instruction_dim=16,
                       **overrides)
    return QTransformer(cfg)


def _batch(model, b=6, seed=0):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)

    def frames():
        return torch.randint(0, 256, (b, cfg.history, 3, *cfg.image_size), dtype=torch.uint8,
                             generator=g)

    return {
        "frames": frames(), "next_frames": frames(),
        "instruction_embedding": torch.randn(b, cfg.instruction_dim, generator=g),
        "state": torch.zeros(b, 0), "next_state": torch.zeros(b, 0),
        "action_bins": torch.stack([torch.randint(0, n, (b,), generator=g)
                                    for n in cfg.action_bins], 1),
        "reward": torch.zeros(b), "done": torch.zeros(b),
        "discount": torch.full((b,), 0.98), "mc_return": torch.zeros(b),
    }


def _no_mc(**kw):
    return LearnerConfig(mc_lower_bound=False, **kw)


def test_reward_enters_the_last_dimension_target_and_the_loss():
    model = _model()
    learner = Learner(model, _no_mc())
    batch = _batch(model)
    for done in (0.0, 1.0):
        batch["done"] = torch.full((6,), done)
        base = learner.targets(batch)
        loss0, _ = learner.compute_loss(batch)
        batch["reward"] = torch.full((6,), 0.3)
        moved = learner.targets(batch)
        loss1, _ = learner.compute_loss(batch)
        batch["reward"] = torch.zeros(6)
        torch.testing.assert_close(moved[:, -1], base[:, -1] + 0.3)
        torch.testing.assert_close(moved[:, :-1], base[:, :-1])      # rewards only at the end
        assert loss0.item() != loss1.item()


def test_done_removes_bootstrapping_and_not_done_keeps_it():
    model = _model()
    learner = Learner(model, _no_mc())
    batch = _batch(model)
    batch["reward"] = torch.full((6,), 0.25)
    batch["done"] = torch.ones(6)
    for seed in (1, 2):                                              # next state irrelevant
        batch["next_frames"] = _batch(model, seed=seed)["next_frames"]
        torch.testing.assert_close(learner.targets(batch)[:, -1], torch.full((6,), 0.25))
    batch["done"] = torch.zeros(6)
    for seed in (1, 2):
        batch["next_frames"] = _batch(model, seed=seed)["next_frames"]
        with torch.no_grad():
            q_next = learner.target(batch["next_frames"], batch["instruction_embedding"], None,
                                    batch["action_bins"])[:, 0]
        best = q_next.masked_fill(~model.valid_mask[0], -1).amax(-1)
        torch.testing.assert_close(learner.targets(batch)[:, -1], 0.25 + 0.98 * best)
        assert (best > 0.1).all()                                     # it does bootstrap


def test_n_step_reward_sum_and_discount_are_what_the_target_uses():
    model = _model()
    learner = Learner(model, _no_mc())
    batch = _batch(model)
    with torch.no_grad():
        q_next = learner.target(batch["next_frames"], batch["instruction_embedding"], None,
                                batch["action_bins"])[:, 0]
    best_next = q_next.masked_fill(~model.valid_mask[0], -1).amax(-1)
    # A 3-step return: R_t + g R_{t+1} + g^2 R_{t+2} summed by the dataset, bootstrapped by g^3.
    g = 0.9
    batch["reward"] = torch.full((6,), 0.0 + g * 0.0 + g * g * 1.0)
    batch["discount"] = torch.full((6,), g ** 3)
    torch.testing.assert_close(learner.targets(batch)[:, -1], g * g + g ** 3 * best_next)
    batch["discount"] = torch.full((6,), g)
    torch.testing.assert_close(learner.targets(batch)[:, -1], g * g + g * best_next)


def test_mc_lower_bound_is_per_transition():
    model = _model()
    learner = Learner(model, LearnerConfig())
    batch = _batch(model)
    mc = torch.tensor([0.0, 0.99, 0.2, 0.995, 0.0, 0.97])
    batch["mc_return"] = mc
    with_mc = learner.targets(batch)
    learner.config.mc_lower_bound = False
    without = learner.targets(batch)
    torch.testing.assert_close(with_mc, torch.maximum(without, mc[:, None]))
    # Rows with a high MC return are lifted, the others are not: no shared constant.
    assert (with_mc[[1, 3, 5]] >= 0.97).all()
    torch.testing.assert_close(with_mc[[0, 4]], without[[0, 4]])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_regularizer_is_in_value_space_and_independent_of_batch_size(reduction):
    model = _model()
    learner = Learner(model, LearnerConfig(conservative_reduction=reduction, value_loss="mse"))
    batch = _batch(model)
    model.eval()
    _, m1 = learner.compute_loss(batch)
    big = {k: torch.cat([v] * 4) for k, v in batch.items()}
    _, m4 = learner.compute_loss(big)
    for key in ("loss", "td_loss", "conservative_loss"):
        assert m4[key].item() == pytest.approx(m1[key].item(), rel=1e-5)
    # Value space: mean over untaken valid bins of 1/2 Q^2 with Q = the bounded (sigmoid) values.
    with torch.no_grad():
        q = model(batch["frames"], batch["instruction_embedding"], None, batch["action_bins"])
    expected = []
    for b in range(6):
        for i, n in enumerate(model.cfg.action_bins):
            untaken = [k for k in range(n) if k != batch["action_bins"][b, i]]
            per_bin = 0.5 * q[b, i, untaken] ** 2
            expected.append(per_bin.mean() if reduction == "mean" else per_bin.sum())
    assert m1["conservative_loss"].item() == pytest.approx(torch.stack(expected).mean().item(),
                                                           rel=1e-5)


def test_regularizer_pushes_untaken_values_down_and_alpha_zero_turns_it_off():
    model = _model()
    batch = _batch(model)
    learner = Learner(model, LearnerConfig(conservative_weight=0.0))
    loss, m = learner.compute_loss(batch)
    assert loss.item() == pytest.approx(m["td_loss"].item())
    learner = Learner(model, LearnerConfig(lr=1e-2, conservative_weight=1.0))
    untaken = model.valid_mask[None] & (torch.arange(32) != batch["action_bins"][..., None])
    with torch.no_grad():
        before = model(batch["frames"], batch["instruction_embedding"], None,
                       batch["action_bins"])[untaken].mean()
    for _ in range(5):
        learner.update(batch)
    with torch.no_grad():
        after = model(batch["frames"], batch["instruction_embedding"], None,
                      batch["action_bins"])[untaken].mean()
    assert after < before


def test_act_chooses_the_argmax_of_exactly_the_trained_q():
    model = _model()
    learner = Learner(model, LearnerConfig(lr=1e-3))
    batch = _batch(model)
    batch["reward"] = torch.ones(6)
    for _ in range(3):
        learner.update(batch)
    policy = Policy(learner.model, TOKENIZER, make_encoder(ENCODER))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    policy.reset("stack the cups")
    for t in range(3):
        result = policy.act(frames[t])
        window = [frames[0]] * max(0, 2 - (t + 1)) + frames[max(0, t - 1):t + 1]
        x = torch.from_numpy(np.stack(window)).permute(0, 3, 1, 2)[None]
        emb = torch.from_numpy(np.array(policy.encoder.encode("stack the cups")))[None]
        with torch.no_grad():
            # The very function the learner's loss is computed on.
            q = learner.model(x, emb, None, torch.from_numpy(result.bins)[None])[0]
        q = q.masked_fill(~learner.model.valid_mask, float("-inf"))
        np.testing.assert_array_equal(result.bins, q.argmax(-1).numpy())
        np.testing.assert_allclose(result.q_values, q.max(-1).values.numpy(), atol=1e-6)
        # The continuous action is the centre of the chosen bin: not one bin off.
        np.testing.assert_array_equal(TOKENIZER.encode(result.action), result.bins)


def test_greedy_acting_never_samples():
    model = _model()
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    runs = []
    for seed in range(3):
        torch.manual_seed(seed + 100)                       # global RNG must not matter either
        policy = Policy(model, TOKENIZER, make_encoder(ENCODER), seed=seed)
        policy.reset("wipe the table")
        runs.append(np.stack([policy.act(f).bins for f in frames]))
    assert all(np.array_equal(r, runs[0]) for r in runs)


def test_target_network_is_evaluated_in_eval_mode_without_gradients():
    model = _model(dropout=0.5)
    learner = Learner(model, LearnerConfig())
    batch = _batch(model)
    model.train()
    t1 = learner.targets(batch)
    t2 = learner.targets(batch)
    torch.testing.assert_close(t1, t2)                     # dropout off in the target network
    assert not learner.target.training and model.training
    assert not any(p.requires_grad for p in learner.target.parameters())
    with torch.no_grad():
        a = model(batch["frames"], batch["instruction_embedding"], None, batch["action_bins"])
        b = model(batch["frames"], batch["instruction_embedding"], None, batch["action_bins"])
    assert not torch.allclose(a, b)                       # (dropout is active when training)
    # Without a target network the online network is used, also in eval mode.
    own = Learner(model, LearnerConfig(target_network=False))
    torch.testing.assert_close(own.targets(batch), own.targets(batch))
    assert model.training


def test_target_network_lags_the_online_network():
    model = _model()
    learner = Learner(model, LearnerConfig(lr=1e-2, tau=0.01))
    batch = _batch(model)
    target_before = [p.clone() for p in learner.target.parameters()]
    learner.update(batch)
    for old, new, online in zip(target_before, learner.target.parameters(), model.parameters(),
                                strict=True):
        torch.testing.assert_close(new, 0.99 * old + 0.01 * online)


def test_gradient_clipping_and_weight_decay_groups():
    model = _model()
    learner = Learner(model, LearnerConfig(grad_clip=1e-3, lr=1e-3, weight_decay=0.1))
    metrics = learner.update(_batch(model))
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()
                                                  if p.grad is not None]))
    assert total.item() <= 1e-3 * 1.001 < metrics["grad_norm"]
    decayed, plain = learner.optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])
