"""Hand-computed targets and losses on a 2-step episode with 3 action dimensions.

The episode: s_0 --a_0--> s_1 --a_1--> end, rewards R_0 = 0, R_1 = 1 (success at the last step),
gamma = 0.5. Dimensions have 4, 4 and 2 bins (bins 2 and 3 of the last one do not exist).
Monte Carlo returns: MC_0 = 0 + 0.5 * 1 = 0.5, MC_1 = 1.

Q tables (value space), rows = dimensions, teacher-forced with the data's bins:

    target net  s_0: [.10 .20 .30 .40] [.20 .60 .30 .10] [.40 .70 (.99 .99 invalid)]
                s_1: [.60 .80 .10 .30] [.05 .15 .35 .25] [.90 .45 (.99 .99 invalid)]
                s_2: [.95 .90 .97 .85] ...   (after the end: must never be used)
    online net  s_0: [.20 .40 .60 .80] [.50 .10 .90 .30] [.10 .60 (.50 .50 invalid)]
                s_1: [.70 .20 .20 .20] [.10 .10 .10 .80] [.30 .90 (0 0 invalid)]
    data bins   a_0 = (1, 2, 0), a_1 = (0, 3, 1)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qt_ros.qtransformer.learner import (
    Learner,
    LearnerConfig,
    bellman_targets,
    q_transformer_loss,
    untaken_bins,
)

BINS = (4, 4, 2)
VALID = torch.arange(4)[None, :] < torch.tensor(BINS)[:, None]
TARGET_Q = torch.tensor([
    [[.10, .20, .30, .40], [.20, .60, .30, .10], [.40, .70, .99, .99]],
    [[.60, .80, .10, .30], [.05, .15, .35, .25], [.90, .45, .99, .99]],
    [[.95, .90, .97, .85], [.99, .99, .99, .99], [.99, .99, .99, .99]],
])
ONLINE_Q = torch.tensor([
    [[.20, .40, .60, .80], [.50, .10, .90, .30], [.10, .60, .50, .50]],
    [[.70, .20, .20, .20], [.10, .10, .10, .80], [.30, .90, .00, .00]],
    [[.00, .00, .00, .00], [.00, .00, .00, .00], [.00, .00, .00, .00]],
])
A = torch.tensor([[1, 2, 0], [0, 3, 1]])
GAMMA = 0.5


def _transitions(n_step):
    """The dataset's fields for t = 0, 1 (n-step sums worked out by hand)."""
    if n_step == 1:
        reward = [0.0, 1.0]             # R_0; R_1
        done = [0.0, 1.0]               # t + 1 >= T only for t = 1
        next_state = [1, 2]
    else:                               # n = 2
        reward = [0.0 + GAMMA * 1.0, 1.0]   # R_0 + gamma R_1 = 0.5; R_1 (episode ends)
        done = [1.0, 1.0]               # both reach the end within 2 steps
        next_state = [1, 1]             # history ending at T-1 when done
    return {"reward": torch.tensor(reward), "done": torch.tensor(done),
            "discount": torch.tensor([GAMMA ** n_step] * 2), "mc_return": torch.tensor([0.5, 1.0]),
            "next": next_state}


def _targets(n_step, **switches):
    tr = _transitions(n_step)
    return bellman_targets(TARGET_Q[:2], TARGET_Q[tr["next"], 0], VALID, tr["reward"],
                           tr["discount"], tr["done"], tr["mc_return"], **switches)


def test_one_step_targets():
    # t=0: dim 0 <- max row 1 of s_0 = .60; dim 1 <- max valid row 2 = .70 (not the invalid .99);
    #      dim 2 <- R_0 + gamma (1 - 0) max_b Q(s_1, a^1 = b) = 0 + .5 * .80 = .40 -> MC .50.
    # t=1: dim 0 <- .35; dim 1 <- .90; dim 2 <- R_1 + gamma * 0 * ... = 1; MC_1 = 1 lifts all.
    torch.testing.assert_close(_targets(1), torch.tensor([[.60, .70, .50], [1., 1., 1.]]))
    torch.testing.assert_close(_targets(1, mc_lower_bound=False),
                               torch.tensor([[.60, .70, .40], [.35, .90, 1.]]))


def test_done_removes_bootstrapping():
    # With done = 1 the last dimension's target is the reward alone, whatever s_2's Q is.
    no_mc = _targets(1, mc_lower_bound=False)
    assert no_mc[1, 2] == pytest.approx(1.0)
    tr = _transitions(1)
    continued = bellman_targets(TARGET_Q[:2], TARGET_Q[tr["next"], 0], VALID, tr["reward"],
                                tr["discount"], torch.zeros(2), tr["mc_return"],
                                mc_lower_bound=False)
    assert continued[1, 2] == pytest.approx(1.0 + GAMMA * 0.97)     # would bootstrap from s_2


def test_n_step_targets():
    # n = 2, t=0: R_0 + gamma R_1 = .5, done (the episode ends within 2 steps) -> .5, no
    # gamma^2 max Q(s_2) term; t=1: 1.
    torch.testing.assert_close(_targets(2, mc_lower_bound=False),
                               torch.tensor([[.60, .70, .50], [.35, .90, 1.]]))
    # Were the episode to go on (done = 0), t=0 would add gamma^2 max_b Q(s_2, b) = .25 * .97.
    tr = _transitions(2)
    go_on = bellman_targets(TARGET_Q[:2], TARGET_Q[[2, 2], 0], VALID, tr["reward"],
                            tr["discount"], torch.zeros(2), tr["mc_return"], mc_lower_bound=False)
    assert go_on[0, 2] == pytest.approx(0.5 + 0.25 * 0.97)


def test_switches_change_the_targets():
    # Without autoregressive targets every dimension gets the last dimension's target.
    torch.testing.assert_close(
        _targets(1, autoregressive=False, mc_lower_bound=False),
        torch.tensor([[.40, .40, .40], [1., 1., 1.]]))
    # Without bootstrapping the last dimension's target is the n-step reward alone.
    torch.testing.assert_close(_targets(1, bootstrap=False, mc_lower_bound=False),
                               torch.tensor([[.60, .70, .00], [.35, .90, 1.]]))


def test_loss_values():
    targets = _targets(1)                                  # [[.6 .7 .5] [1 1 1]]
    # t=0: taken Q = (.40, .90, .10): TD = 1/2 (.2^2, .2^2, .4^2) = (.02, .02, .08), mean .04.
    # Regularizer, mean over untaken VALID bins of 1/2 Q^2:
    #   dim 0 {0,2,3}: (.04 + .36 + .64) / 3 / 2 = .173333
    #   dim 1 {0,1,3}: (.25 + .01 + .09) / 3 / 2 = .058333
    #   dim 2 {1}    : .36 / 2                   = .18      (bins 2, 3 do not exist)
    #   mean = .137222
    loss, td, cons = q_transformer_loss(ONLINE_Q[:1], A[:1], targets[:1], VALID, 1.0)
    assert td.item() == pytest.approx(0.04)
    assert cons.item() == pytest.approx(0.4116667 / 3, abs=1e-6)
    assert loss.item() == pytest.approx(0.04 + 0.4116667 / 3, abs=1e-6)
    # t=1: taken Q = (.7, .8, .9) vs 1: TD = (.045, .02, .005), mean .023333;
    #   regularizer: dim 0 {1,2,3} .02, dim 1 {0,1,2} .005, dim 2 {0} .045 -> mean .023333.
    # The batch of both: means of the per-transition values.
    loss, td, cons = q_transformer_loss(ONLINE_Q[:2], A, targets, VALID, 1.0)
    assert td.item() == pytest.approx((0.04 + 0.0233333) / 2, abs=1e-6)
    assert cons.item() == pytest.approx((0.1372222 + 0.0233333) / 2, abs=1e-6)
    # alpha scales the regularizer; alpha = 0 leaves the TD loss alone.
    loss2, _, _ = q_transformer_loss(ONLINE_Q[:2], A, targets, VALID, 2.0)
    assert loss2.item() == pytest.approx(td.item() + 2 * cons.item(), abs=1e-6)
    loss0, _, _ = q_transformer_loss(ONLINE_Q[:2], A, targets, VALID, 0.0)
    assert loss0.item() == pytest.approx(td.item(), abs=1e-7)


def test_summed_regularizer_weighs_every_untaken_bin_alpha():
    # The default (conservative_reduction="sum"): t=0 sums instead of averaging:
    #   dim 0 (.04 + .36 + .64) / 2 = .52, dim 1 (.25 + .01 + .09) / 2 = .175, dim 2 .18
    #   -> mean over dimensions .291667; t=1: dim 0 .02 * 3, dim 1 .005 * 3, dim 2 .045 -> .04
    targets = _targets(1)
    _, _, cons = q_transformer_loss(ONLINE_Q[:1], A[:1], targets[:1], VALID, 1.0,
                                    reduction="sum")
    assert cons.item() == pytest.approx(0.875 / 3, abs=1e-6)
    _, _, cons = q_transformer_loss(ONLINE_Q[:2], A, targets, VALID, 1.0, reduction="sum")
    assert cons.item() == pytest.approx((0.875 / 3 + 0.04) / 2, abs=1e-6)
    assert LearnerConfig().conservative_reduction == "sum"
    with pytest.raises(ValueError, match="conservative_reduction"):
        LearnerConfig(conservative_reduction="max")


def test_radius_leaves_the_data_bins_neighbours_out_of_the_regularizer():
    # 9 bins (span 8): radius 0.25 exempts |b - a| <= 2; the 2-bin dimension is never exempted.
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 2:] = False
    a = torch.tensor([[4, 0]])
    plain = untaken_bins(a, valid)
    near = untaken_bins(a, valid, radius=0.25)
    assert plain[0, 0].tolist() == [True] * 4 + [False] + [True] * 4
    assert near[0, 0].tolist() == [True, True] + [False] * 5 + [True, True]
    assert near[0, 1].tolist() == plain[0, 1].tolist() == [False, True] + [False] * 7
    with pytest.raises(ValueError, match="conservative_radius"):
        LearnerConfig(conservative_radius=1.0)


@pytest.mark.parametrize("radius, expected", [(0.0, 0.5), (0.25, 1.0)])
def test_noisy_data_shrinks_q_unless_the_neighbours_are_exempt(radius, expected):
    """One state; the data takes bins 4 and 5 equally often, both worth 1, never bin 0.

    The summed regularizer's fixed point is p y / (p + (1 - p) alpha) = 0.5: a bin's value is
    scaled by how often the data took it. With the radius the two neighbours do not pull each
    other down and both reach their value, 1, while the never-taken bin 0 still goes to q_min.
    """
    valid = torch.ones(1, 9, dtype=torch.bool)
    logits = torch.zeros(1, 1, 9, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.05)
    a = torch.tensor([[4], [5]])
    for _ in range(1500):
        q = torch.sigmoid(logits).expand(2, 1, 9)
        loss, _, _ = q_transformer_loss(q, a, torch.ones(2, 1), valid, 1.0, reduction="sum",
                                        value_loss="bce", logits=logits.expand(2, 1, 9),
                                        radius=radius)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    q = torch.sigmoid(logits)[0, 0]
    assert q[4].item() == pytest.approx(expected, abs=0.03)
    assert q[5].item() == pytest.approx(expected, abs=0.03)
    assert q[0].item() < 0.05


class TableModel(nn.Module):
    """A stand-in network whose Q values are a table per state (one-hot ``state``)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.register_buffer("valid_mask", VALID.clone())
        self.cfg = type("Cfg", (), {"q_min": 0.0, "q_max": 1.0})()

    def forward(self, frames, instruction_embedding, state, action_bins, num_dims=None):
        q = self.table[state.argmax(-1)]
        return q if num_dims is None else q[:, :num_dims]


def _batch(n_step):
    tr = _transitions(n_step)
    eye = torch.eye(3)
    return {"frames": None, "next_frames": None, "instruction_embedding": torch.zeros(2, 4),
            "state": eye[[0, 1]], "next_state": eye[tr["next"]], "action_bins": A,
            "reward": tr["reward"], "done": tr["done"], "discount": tr["discount"],
            "mc_return": tr["mc_return"]}


@pytest.mark.parametrize("n_step", [1, 2])
def test_learner_wires_online_and_target_networks(n_step):
    learner = Learner(TableModel(ONLINE_Q), LearnerConfig(lr=0.1, conservative_reduction="mean",
                                                          value_loss="mse"))
    with torch.no_grad():
        learner.target.table.copy_(TARGET_Q)
    torch.testing.assert_close(learner.targets(_batch(n_step)), _targets(n_step))
    _, metrics = learner.compute_loss(_batch(1))
    assert metrics["td_loss"].item() == pytest.approx((0.04 + 0.0233333) / 2, abs=1e-6)
    assert metrics["conservative_loss"].item() == pytest.approx((0.1372222 + 0.0233333) / 2,
                                                                abs=1e-6)
    # Without a target network the online table is the bootstrap source.
    own = Learner(TableModel(ONLINE_Q), LearnerConfig(target_network=False, value_loss="mse",
                                                      mc_lower_bound=False))
    # t=0: dim 0 <- max online row 1 of s_0 = .9; dim 1 <- max valid row 2 = .6;
    #      dim 2 <- 0 + .5 * max online row 0 of s_1 = .35.
    assert own.targets(_batch(1))[0].tolist() == pytest.approx([.9, .6, .35])


def test_polyak_update_and_gradient_step():
    learner = Learner(TableModel(ONLINE_Q), LearnerConfig(lr=0.1, tau=0.25, grad_clip=0.0,
                                                          value_loss="mse",
                                                          weight_decay=0.0))
    with torch.no_grad():
        learner.target.table.copy_(TARGET_Q)
    metrics = learner.update(_batch(1))
    online = learner.model.table.detach()
    assert not torch.equal(online, ONLINE_Q)             # the optimizer moved it
    # Polyak after the step: target = .75 old target + .25 new online.
    torch.testing.assert_close(learner.target.table, 0.75 * TARGET_Q + 0.25 * online)
    assert learner.step == 1 and metrics["loss"] > 0


def test_bce_value_loss_has_the_mse_minimiser_without_the_sigmoid_damping():
    valid = torch.ones(1, 3, dtype=torch.bool)
    action = torch.tensor([[1]])
    target = torch.tensor([[0.8]])

    def losses(logits, value_loss):
        logits = logits.clone().requires_grad_(True)
        q = torch.sigmoid(logits)
        loss, td, cons = q_transformer_loss(q, action, target, valid, 0.0, 0.0, "sum",
                                            value_loss, logits, 1.0)
        loss.backward()
        return loss, logits.grad

    # Far from the target (Q = 0.0067 vs 0.8) mse's gradient on the logit is ~150x weaker.
    far = torch.full((1, 1, 3), -5.0)
    _, g_bce = losses(far, "bce")
    _, g_mse = losses(far, "mse")
    assert g_bce[0, 0, 1].item() == pytest.approx(torch.sigmoid(torch.tensor(-5.0)).item() - 0.8,
                                                   abs=1e-6)
    assert abs(g_bce[0, 0, 1]) > 100 * abs(g_mse[0, 0, 1])
    # Both are minimised where Q equals the target: the fixed point does not change.
    at_target = torch.full((1, 1, 3), torch.logit(torch.tensor(0.8)).item())
    for value_loss in ("bce", "mse"):
        _, grad = losses(at_target, value_loss)
        assert grad.abs().max().item() < 1e-6
    # Untaken bins are pulled toward q_min: bce's pull is softplus(logit) (BCE toward 0).
    q = torch.sigmoid(far)
    _, _, cons = q_transformer_loss(q, action, target, valid, 1.0, 0.0, "sum", "bce", far, 1.0)
    assert cons.item() == pytest.approx(2 * torch.nn.functional.softplus(torch.tensor(-5.0)).item(),
                                        rel=1e-5)
    with pytest.raises(ValueError, match="logits"):
        q_transformer_loss(q, action, target, valid, 1.0, 0.0, "sum", "bce")
