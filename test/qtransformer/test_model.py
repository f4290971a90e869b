"""The Q-Transformer network: presets, shapes, autoregressive structure, bounded Q values."""

from __future__ import annotations

import pytest
import torch

from qt_ros.qtransformer.model import QTransformer, count_parameters, greedy
from qt_ros.qtransformer.model_config import PRESETS, ModelConfig, model_config


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster, and leaves the other core to parallel tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(cfg, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, cfg.history, 3, *cfg.image_size), dtype=torch.uint8,
                           generator=g)
    emb = torch.randn(b, cfg.instruction_dim, generator=g)
    state = torch.randn(b, cfg.state_dim, generator=g) if cfg.state_dim else None
    bins = torch.stack([torch.randint(0, n, (b,), generator=g) for n in cfg.action_bins], 1)
    return frames, emb, state, bins


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = model_config("tiny", action_bins=(16, 16, 8, 2))
    return QTransformer(cfg).eval()


def test_presets_exist_and_small_is_near_ten_million_parameters():
    assert {"tiny", "small", "base"} <= set(PRESETS)
    small = count_parameters(QTransformer(model_config("small")))
    assert 7e6 <= small <= 12e6, small
    tiny = count_parameters(QTransformer(model_config("tiny")))
    assert tiny < 0.5e6
    with pytest.raises(ValueError, match="unknown model preset"):
        model_config("huge")


def test_config_round_trip_and_validation():
    cfg = model_config("tiny", state_dim=5, image_size=(40, 48))
    assert ModelConfig.from_config(cfg.to_config()) == cfg
    with pytest.raises(ValueError, match="unknown model config"):
        ModelConfig.from_config({**cfg.to_config(), "bogus": 1})
    with pytest.raises(ValueError, match="divisible"):
        model_config("tiny", d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="q_max"):
        model_config("tiny", q_min=1.0, q_max=1.0)
    with pytest.raises(ValueError, match="action_bins"):
        model_config("tiny", action_bins=(1, 4))


def test_forward_shapes_and_q_range(tiny):
    cfg = tiny.cfg
    frames, emb, state, bins = _inputs(cfg)
    q = tiny(frames, emb, state, bins)
    assert q.shape == (3, cfg.num_dims, cfg.max_bins)
    assert ((q >= 0) & (q <= 1)).all()
    wide = QTransformer(model_config("tiny", q_min=-2.0, q_max=5.0)).eval()
    f2, e2, s2, b2 = _inputs(wide.cfg)
    with torch.no_grad():
        wide.head_bias.fill_(20.0)
        assert torch.allclose(wide(f2, e2, s2, b2), torch.tensor(5.0))
        wide.head_bias.fill_(-20.0)
        assert torch.allclose(wide(f2, e2, s2, b2), torch.tensor(-2.0))


def test_dimension_i_depends_only_on_earlier_bins(tiny):
    """Row i is Q(s, a^{1:i-1}, .): changing the bin of dimension j changes rows > j only."""
    frames, emb, state, bins = _inputs(tiny.cfg)
    with torch.no_grad():
        q = tiny(frames, emb, state, bins)
        for j in range(tiny.cfg.num_dims):
            other = bins.clone()
            other[:, j] = (other[:, j] + 1) % tiny.cfg.action_bins[j]
            q2 = tiny(frames, emb, state, other)
            assert torch.equal(q[:, :j + 1], q2[:, :j + 1])
            if j + 1 < tiny.cfg.num_dims:
                assert not torch.allclose(q[:, j + 1:], q2[:, j + 1:])


def test_observation_and_instruction_matter(tiny):
    frames, emb, state, bins = _inputs(tiny.cfg)
    with torch.no_grad():
        q = tiny(frames, emb, state, bins)
        older = frames.clone()
        older[:, 0] = 255 - older[:, 0]                  # only the oldest frame of the history
        assert not torch.allclose(q, tiny(older, emb, state, bins))
        assert not torch.allclose(q, tiny(frames, -emb, state, bins))


def test_film_conditions_the_image_encoder():
    torch.manual_seed(0)
    model = QTransformer(model_config("tiny")).eval()
    torch.nn.init.normal_(model.encoder.film.weight, std=0.1)
    frames, emb, _, _ = _inputs(model.cfg, b=1)
    x = frames[:, 0]
    with torch.no_grad():
        a = model.encode_frames(x, model.film_params(emb))
        b = model.encode_frames(x, model.film_params(-emb))
    assert not torch.allclose(a, b)


def test_samples_do_not_interact_within_a_batch(tiny):
    """No batch statistics: a sample's Q is the same alone as in a batch (train mode too)."""
    frames, emb, state, bins = _inputs(tiny.cfg, b=4)
    tiny.train()
    try:
        with torch.no_grad():
            batched = tiny(frames, emb, state, bins)
            alone = torch.cat([tiny(frames[i:i + 1], emb[i:i + 1], None, bins[i:i + 1])
                               for i in range(4)])
    finally:
        tiny.eval()
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_cached_decoding_matches_the_teacher_forced_pass(tiny):
    frames, emb, state, _ = _inputs(tiny.cfg, b=4)
    with torch.no_grad():
        context = tiny.observe(frames, emb, state)
        bins, q_chosen = tiny.decode(context, greedy)
        q = tiny(frames, emb, state, bins)
    valid = tiny.valid_mask
    assert (bins < torch.tensor(tiny.cfg.action_bins)).all()
    assert torch.equal(q.masked_fill(~valid, -1).argmax(-1), bins)
    torch.testing.assert_close(q.gather(2, bins[..., None])[..., 0], q_chosen, atol=1e-6,
                               rtol=1e-6)


def test_state_only_and_state_token_models():
    torch.manual_seed(0)
    model = QTransformer(model_config("tiny", history=0, state_dim=3)).eval()
    assert not hasattr(model, "encoder") and model.context_length == 2
    emb = torch.randn(2, model.cfg.instruction_dim)
    state = torch.randn(2, 3)
    bins = torch.zeros(2, model.cfg.num_dims, dtype=torch.long)
    with torch.no_grad():
        q = model(None, emb, state, bins)
        assert not torch.allclose(q, model(None, emb, state + 1, bins))
    with pytest.raises(ValueError, match="state vector of size 3"):
        model(None, emb, None, bins)


def test_rejects_frames_of_the_wrong_shape(tiny):
    frames, emb, state, bins = _inputs(tiny.cfg)
    with pytest.raises(ValueError, match="do not match the model"):
        tiny(frames[:, :1], emb, state, bins)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = QTransformer(model_config("tiny", state_dim=2))
    torch.nn.init.normal_(model.encoder.film.weight, std=0.01)
    frames, emb, state, bins = _inputs(model.cfg)
    model(frames, emb, state, bins).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == [], missing


def test_a_model_with_the_datas_state_statistics_standardizes_the_state():
    """``state_mean``/``state_std`` (``qt-ros train --state-norm``): the same weights see
    (state - mean) / std, so millimetre-sized dimensions (a finger's opening) are not lost."""
    torch.manual_seed(0)
    mean, std = (0.1, -0.2, 0.005), (0.05, 0.1, 0.004)
    normed = QTransformer(model_config("tiny", state_dim=3, state_mean=mean, state_std=std,
                                       action_bins=(16, 2))).eval()
    plain = QTransformer(model_config("tiny", state_dim=3, action_bins=(16, 2))).eval()
    plain.load_state_dict(normed.state_dict())        # the statistics are not weights
    frames, emb, state, bins = _inputs(normed.cfg)
    with torch.no_grad():
        got = normed(frames, emb, state, bins)
        want = plain(frames, emb, (state - torch.tensor(mean)) / torch.tensor(std), bins)
        unscaled = plain(frames, emb, state, bins)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, unscaled)
    assert ModelConfig.from_config(normed.cfg.to_config()) == normed.cfg
    with pytest.raises(ValueError, match="state_mean and state_std"):
        model_config("tiny", state_dim=3, state_mean=mean, state_std=(1.0, 1.0))
    with pytest.raises(ValueError, match="std > 0"):
        model_config("tiny", state_dim=3, state_mean=mean, state_std=(1.0, 0.0, 1.0))
