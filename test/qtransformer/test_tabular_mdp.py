"""The learner reaches a known Q on a small MDP from an offline dataset of mixed-quality episodes.

The MDP: a corridor of 5 cells, start in cell 0, the object in cell 4. The action has two
dimensions of 3 bins: move (left, stay, right) and gripper (open, hold, grasp). Grasping ends the
episode: reward 1 in cell 4 (success), 0 elsewhere (failure). gamma = 0.9. So
V*(s) = gamma^(4 - s), Q*(s, (m, g)) = 1[s = 4] if g = grasp else gamma V*(s + m - 1), and the
autoregressive Q of the first dimension is max over the gripper of Q*.

Data: 300 episodes, a third each from the optimal policy (demonstrations, from cell 0), an
epsilon-greedy policy (epsilon 0.3) and a uniformly random one (failures mostly), the last two
from random cells, as 1-step transitions with per-transition Monte Carlo returns.

Networks, both trained by the real ``Learner`` (same targets, loss, target network, AdamW):
- ``TabularQ``: one-hot state in, a table of logits per (state, earlier bins) out, sigmoid-
  bounded like the QTransformer. No approximation error, so a tight tolerance (0.02).
- the real ``QTransformer`` with no images (``history=0``), its input the one-hot state
  (tolerance 0.05).

Results checked:
- Conservative regularizer off (alpha = 0): Q* on every (state, action), both dimensions.
- Paper defaults (alpha = 1): the regularizer deliberately pulls Q of partly-taken bins toward
  0, so the fixed point is not Q* but a known smaller one, computed exactly here by tabular
  fixed-point iteration of the same loss; the learned Q matches it, is never above Q*, and its
  greedy policy is optimal.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from qt_ros.qtransformer.learner import Learner, LearnerConfig
from qt_ros.qtransformer.model import QTransformer
from qt_ros.qtransformer.model_config import ModelConfig

S, GOAL, GAMMA, M, G = 5, 4, 0.9, 3, 3
# Q* holds exactly 0 and 1 (failed and successful grasps), which a sigmoid only approaches as its
# logit grows without bound; those entries set the table's tolerance (the others end < 0.005).
TABLE_TOLERANCE = 0.02
TRANSFORMER_TOLERANCE = 0.05


class TabularQ(nn.Module):
    """Q(s, a^1) and Q(s, a^1, a^2) as sigmoid(logit tables); input: one-hot state."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(S, M)            # on a one-hot input: a table lookup
        self.second = nn.Linear(S, M * G)
        self.register_buffer("valid_mask", torch.ones(2, max(M, G), dtype=torch.bool))
        self.cfg = type("Cfg", (), {"q_min": 0.0, "q_max": 1.0})()

    def forward(self, frames, instruction_embedding, state, action_bins, num_dims=None):
        q1 = self.first(state)                                           # [B, M]
        q2 = self.second(state).view(-1, M, G)
        q2 = q2.gather(1, action_bins[:, :1, None].expand(-1, 1, G))[:, 0]   # given a^1
        q = torch.sigmoid(torch.stack([q1, q2], dim=1))
        return q if num_dims is None else q[:, :num_dims]


def _step(s, m, g):
    if g == 2:
        return s, float(s == GOAL), True
    return int(np.clip(s + m - 1, 0, S - 1)), 0.0, False


def q_star() -> np.ndarray:
    v = GAMMA ** (GOAL - np.arange(S))
    q = np.zeros((S, M, G))
    for s in range(S):
        for m in range(M):
            for g in range(G):
                s2, r, done = _step(s, m, g)
                q[s, m, g] = r + (0.0 if done else GAMMA * v[s2])
    return q


def _dataset(seed=0, episodes=300):
    """1-step transitions (s, m, g, reward, s', done, discount, mc_return) as arrays."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(episodes):
        kind = i % 3                             # 0 demo, 1 epsilon-greedy, 2 random
        s, traj = (0 if kind == 0 else int(rng.integers(0, S))), []
        for _ in range(100):
            if kind == 0 or (kind == 1 and rng.random() > 0.3):
                m, g = (1, 2) if s == GOAL else (2, int(rng.integers(0, 2)))
            else:
                m, g = int(rng.integers(0, M)), int(rng.integers(0, G))
            s2, r, done = _step(s, m, g)
            traj.append([s, m, g, r, s2, float(done)])
            s = s2
            if done:
                break
        assert traj[-1][5] == 1.0, "episode truncated"
        mc = 0.0
        for row in reversed(traj):
            mc = row[3] + GAMMA * mc
            row += [GAMMA, mc]
        rows += traj
    return np.array(rows, dtype=np.float64)


def regularized_fixed_point(data: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The exact minimizer of the learner's loss for a table, by fixed-point iteration.

    For one table entry, the loss terms over the data are 1/2 (Q - target_j)^2 for samples that
    took the bin and alpha / (K - 1) * 1/2 Q^2 for samples in the same context that took another
    bin, so the minimizer is sum(target_j) / (n_taken + alpha / (K - 1) * n_other).
    """
    s, m, g = data[:, 0].astype(int), data[:, 1].astype(int), data[:, 2].astype(int)
    r, s2, done, disc, mc = data[:, 3], data[:, 4].astype(int), data[:, 5], data[:, 6], data[:, 7]
    n1 = np.zeros((S, M))
    np.add.at(n1, (s, m), 1)
    n2 = np.zeros((S, M, G))
    np.add.at(n2, (s, m, g), 1)
    denom1 = n1 + alpha / (M - 1) * (n1.sum(1, keepdims=True) - n1)
    denom2 = n2 + alpha / (G - 1) * (n2.sum(2, keepdims=True) - n2)
    q1, q2 = np.zeros((S, M)), np.zeros((S, M, G))
    for _ in range(500):
        t1 = np.maximum(q2[s, m].max(1), mc)                            # first dim's target
        t2 = np.maximum(r + disc * (1 - done) * q1[s2].max(1), mc)        # last dim's target
        sum1 = np.zeros((S, M))
        np.add.at(sum1, (s, m), t1)
        sum2 = np.zeros((S, M, G))
        np.add.at(sum2, (s, m, g), t2)
        q1 = np.divide(sum1, denom1, out=np.zeros_like(sum1), where=denom1 > 0)
        q2 = np.divide(sum2, denom2, out=np.zeros_like(sum2), where=denom2 > 0)
    return q1, q2


def _onehot(idx) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(idx, dtype=torch.long), S).float()


def _batch(data: np.ndarray) -> dict[str, torch.Tensor]:
    b = len(data)
    return {
        "frames": None, "next_frames": None,
        "instruction_embedding": torch.zeros(b, 8),
        "state": _onehot(data[:, 0]), "next_state": _onehot(data[:, 4]),
        "action_bins": torch.as_tensor(data[:, 1:3], dtype=torch.long),
        "reward": torch.as_tensor(data[:, 3]), "done": torch.as_tensor(data[:, 5]),
        "discount": torch.as_tensor(data[:, 6]), "mc_return": torch.as_tensor(data[:, 7]),
    }


def _learned_q(model) -> tuple[np.ndarray, np.ndarray]:
    states = np.repeat(np.arange(S), M)
    moves = np.tile(np.arange(M), S)
    bins = torch.as_tensor(np.stack([moves, np.zeros_like(moves)], 1))
    with torch.no_grad():
        q = model(None, torch.zeros(len(states), 8), _onehot(states), bins).numpy()
    q1 = q[::M, 0, :M]                                  # Q(s, a^1 = .)
    q2 = q[:, 1, :G].reshape(S, M, G)                   # Q(s, a^1 = m, a^2 = .)
    return q1, q2


@contextmanager
def _one_thread():
    """Tiny networks: a second thread costs more than it gains (and slows parallel tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train_tabular(alpha: float, steps: int = 1500):
    """Full-batch updates of the table: converges to the loss's exact minimizer."""
    with _one_thread():
        torch.manual_seed(0)
        data = _dataset()
        model = TabularQ()
        learner = Learner(model, LearnerConfig(lr=0.05, tau=0.2, weight_decay=0.0,
                                               conservative_weight=alpha, value_loss="mse",
                                               conservative_reduction="mean"))
        batch = _batch(data)
        for _ in range(steps):
            learner.update(batch)
        return data, _learned_q(model)


def _train_transformer(alpha: float, steps: int = 900, seed: int = 0):
    with _one_thread():
        torch.manual_seed(seed)
        data = _dataset(seed)
        cfg = ModelConfig(history=0, instruction_dim=8, state_dim=S, action_bins=(M, G),
                          d_model=32, frame_layers=0, num_layers=1, head_layers=1,
                          head_d_model=32, num_heads=2, mlp_ratio=2.0, head_mlp_ratio=2.0)
        model = QTransformer(cfg)
        learner = Learner(model, LearnerConfig(lr=1e-2, tau=0.1, weight_decay=0.0,
                                               conservative_weight=alpha, value_loss="mse",
                                               conservative_reduction="mean"))
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            learner.update(_batch(data[rng.integers(0, len(data), 64)]))
        model.eval()
        return data, _learned_q(model)


def _assert_close(learned, expected, tolerance):
    (q1, q2), (e1, e2) = learned, expected
    assert np.abs(q2 - e2).max() < tolerance, np.round(q2 - e2, 3)
    assert np.abs(q1 - e1).max() < tolerance, np.round(q1 - e1, 3)


def _assert_greedy_is_optimal(q1, q2):
    move = q1.argmax(1)
    grip = q2[np.arange(S), move].argmax(1)
    assert (move[:GOAL] == 2).all() and (grip[:GOAL] != 2).all()        # go right, no grasp
    assert grip[GOAL] == 2                                              # grasp at the goal


def test_dataset_is_mixed_quality():
    data = _dataset()
    ends = data[data[:, 5] == 1]
    success = ends[:, 3].mean()
    assert 0.4 < success < 0.8                      # successes and failures both present
    n = np.zeros((S, M, G))
    np.add.at(n, (data[:, 0].astype(int), data[:, 1].astype(int), data[:, 2].astype(int)), 1)
    assert (n > 0).all()                            # every (state, action) appears


def test_tabular_network_reaches_q_star_with_the_regularizer_off():
    _, learned = _train_tabular(alpha=0.0)
    qs = q_star()
    _assert_close(learned, (qs.max(2), qs), TABLE_TOLERANCE)


def test_tabular_network_reaches_the_conservative_fixed_point_with_paper_defaults():
    data, learned = _train_tabular(alpha=1.0)
    f1, f2 = regularized_fixed_point(data, alpha=1.0)
    qs = q_star()
    assert (f2 <= qs + 1e-9).all() and (f1 <= qs.max(2) + 1e-9).all()   # conservative
    assert (f2 < qs - 0.05).any()                                      # and really below Q*
    _assert_close(learned, (f1, f2), TABLE_TOLERANCE)
    _assert_greedy_is_optimal(*learned)


def test_q_transformer_reaches_q_star_with_the_regularizer_off():
    _, learned = _train_transformer(alpha=0.0)
    qs = q_star()
    _assert_close(learned, (qs.max(2), qs), TRANSFORMER_TOLERANCE)
    _assert_greedy_is_optimal(*learned)
