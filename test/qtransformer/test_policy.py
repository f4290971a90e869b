"""Policy: cached acting equals the full model, greedy is deterministic, exploration on request."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qt_ros.data.images import resize_frame
from qt_ros.qtransformer.checkpoint import load_policy, make_random_checkpoint
from qt_ros.qtransformer.instruction_encoder import EncoderConfig, make_encoder
from qt_ros.qtransformer.model import QTransformer
from qt_ros.qtransformer.model_config import model_config
from qt_ros.qtransformer.policy import ActResult, Exploration, Policy
from qt_ros.qtransformer.tokenizer import ActionTokenizer

INSTRUCTION = "put the cube in the bowl"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset="tiny",
                                  history=3, seed=5)


def _frames(n, size=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def _full_model_q(policy, frames, bins):
    """Q of the whole history computed from scratch by the learner's forward pass."""
    model = policy.model
    w = policy.history
    window = [frames[0]] * max(0, w - len(frames)) + frames[-w:]
    x = torch.from_numpy(np.stack(window)).permute(0, 3, 1, 2)[None]          # [1, w, 3, H, W]
    emb = torch.from_numpy(np.array(policy.encoder.encode(INSTRUCTION)))[None]
    with torch.no_grad():
        return model(x, emb, None, torch.from_numpy(bins)[None])[0]


def test_cached_steps_equal_the_full_forward_pass(checkpoint):
    """Per-frame cache + history padding give the Q the learner computes on [B, w] frames."""
    policy = load_policy(checkpoint)
    frames = _frames(6)
    policy.reset(INSTRUCTION)
    for t in range(len(frames)):
        result = policy.act(frames[t])
        q = _full_model_q(policy, frames[:t + 1], result.bins)
        valid = policy.model.valid_mask
        greedy = q.masked_fill(~valid, -1.0).argmax(-1).numpy()
        np.testing.assert_array_equal(result.bins, greedy)
        chosen = q.gather(1, torch.from_numpy(result.bins)[:, None])[:, 0].numpy()
        np.testing.assert_allclose(result.q_values, chosen, atol=1e-5)


def test_act_result_fields(checkpoint):
    policy = load_policy(checkpoint)
    policy.reset(INSTRUCTION)
    r = policy.act(_frames(1, size=(480, 640))[0])                            # any size
    assert isinstance(r, ActResult)
    assert r.action.dtype == np.float64 and r.action.shape == (8,)
    assert r.bins.dtype == np.int64 and r.q_values.dtype == np.float32
    assert isinstance(r.terminate, bool)
    np.testing.assert_array_equal(policy.tokenizer.decode(r.bins), r.action)
    assert r.terminate == bool(r.bins[-1] == 1)
    assert ((0 <= r.q_values) & (r.q_values <= 1)).all()


def test_greedy_is_deterministic_whatever_the_seed(checkpoint):
    frames = _frames(5)
    runs = []
    for seed in (0, 1):
        policy = load_policy(checkpoint, seed=seed)
        for _ in range(2):
            policy.reset(INSTRUCTION)
            runs.append(np.stack([policy.act(f).bins for f in frames]))
    for run in runs[1:]:
        np.testing.assert_array_equal(run, runs[0])


def test_reset_clears_the_history(checkpoint):
    policy = load_policy(checkpoint)
    a, b = _frames(2)
    policy.reset(INSTRUCTION)
    first = policy.act(a)
    policy.act(b)
    policy.reset(INSTRUCTION)
    again = policy.act(a)
    np.testing.assert_array_equal(first.bins, again.bins)
    np.testing.assert_array_equal(first.q_values, again.q_values)


def test_instruction_changes_the_q_values(checkpoint):
    policy = load_policy(checkpoint)
    frame = _frames(1)[0]
    policy.reset("open the drawer")
    q1 = policy.act(frame).q_values
    policy.reset("close the drawer")
    q2 = policy.act(frame).q_values
    assert not np.allclose(q1, q2)


def test_exploration_only_when_asked_and_reproducible(checkpoint):
    frames = _frames(4)
    greedy = load_policy(checkpoint)
    greedy.reset(INSTRUCTION)
    greedy_bins = np.stack([greedy.act(f).bins for f in frames])

    def explore_run(seed):
        p = load_policy(checkpoint, exploration=Exploration(epsilon=1.0), seed=seed)
        p.reset(INSTRUCTION)
        return np.stack([p.act(f).bins for f in frames])

    a, b, c = explore_run(7), explore_run(7), explore_run(8)
    np.testing.assert_array_equal(a, b)                      # same seed, same run
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, greedy_bins)
    assert (a[:, -1] <= 1).all() and (a >= 0).all() and (a < 256).all()   # valid bins only

    p = load_policy(checkpoint, exploration=Exploration(epsilon=1.0), seed=7)
    p.reset(INSTRUCTION)
    forced = np.stack([p.act(f, explore=False).bins for f in frames])
    np.testing.assert_array_equal(forced, greedy_bins)

    sampler = load_policy(checkpoint, exploration=Exploration(temperature=0.01), seed=3)
    sampler.reset(INSTRUCTION)
    r = sampler.act(frames[0])
    assert (r.bins >= 0).all() and r.bins[-1] <= 1
    with pytest.raises(ValueError, match="needs a Policy built with an Exploration"):
        greedy.act(frames[0], explore=True)


def test_state_vector_and_errors(tmp_path):
    path = make_random_checkpoint(tmp_path / "s", state_dim=4)
    policy = load_policy(path)
    with pytest.raises(RuntimeError, match="before Policy.reset"):
        policy.act(_frames(1)[0], np.zeros(4))
    policy.reset("x")
    frame = _frames(1)[0]
    with pytest.raises(ValueError, match="state vector of size 4"):
        policy.act(frame)
    with pytest.raises(ValueError, match="state vector of size 4"):
        policy.act(frame, np.zeros(3))
    with pytest.raises(ValueError, match="uint8 RGB"):
        policy.act(frame.astype(np.float32), np.zeros(4))
    with pytest.raises(ValueError, match="uint8 RGB"):
        policy.act(frame[..., 0], np.zeros(4))
    q1 = policy.act(frame, np.zeros(4)).q_values
    policy.reset("x")
    q2 = policy.act(frame, np.ones(4)).q_values
    assert not np.allclose(q1, q2)


def test_policy_checks_tokenizer_and_encoder():
    model = QTransformer(model_config("tiny", instruction_dim=16))
    with pytest.raises(ValueError, match="tokenizer bins"):
        Policy(model, ActionTokenizer.uniform(["x"], [0], [1], 4),
               make_encoder(EncoderConfig("hash", 16)))
    with pytest.raises(ValueError, match="instruction encoder"):
        Policy(model, ActionTokenizer(), make_encoder(EncoderConfig("hash", 32)))


def test_resize_frame():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:240] = 255
    small = resize_frame(frame, (32, 48))
    assert small.shape == (32, 48, 3) and small[:15].min() == 255 and small[17:].max() == 0
    assert resize_frame(small, (32, 48)) is small
    assert resize_frame(small, (64, 96)).shape == (64, 96, 3)
