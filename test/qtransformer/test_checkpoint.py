"""Checkpoints: safetensors + config.json, no pickle, identical actions after loading."""

from __future__ import annotations

import json
import time
from dataclasses import fields

import numpy as np
import pytest
import torch

from qt_ros.faults.checkpoint_faults import MALFORMED
from qt_ros.qtransformer.checkpoint import (
    MAX_PARAMETERS_ENV,
    CheckpointError,
    load_model,
    load_policy,
    make_random_checkpoint,
    read_config,
    save_checkpoint,
)
from qt_ros.qtransformer.instruction_encoder import EncoderConfig, make_encoder
from qt_ros.qtransformer.model import QTransformer
from qt_ros.qtransformer.model_config import ModelConfig, model_config
from qt_ros.qtransformer.policy import Policy
from qt_ros.qtransformer.tokenizer import ActionTokenizer


def _frames(n, size=(48, 40), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def _rollout(policy, frames, instruction="pick up the red block", state=None):
    policy.reset(instruction)
    return [policy.act(f, state) for f in frames]


def test_saved_and_loaded_checkpoint_gives_identical_actions(tmp_path):
    tokenizer = ActionTokenizer()
    enc = EncoderConfig(kind="hash", dim=32)
    cfg = model_config("tiny", action_bins=tuple(tokenizer.bins), instruction_dim=32)
    torch.manual_seed(3)
    model = QTransformer(cfg)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer, enc, step=1234, extra={"note": "x"})
    policy = load_policy(tmp_path / "ckpt")
    reference = Policy(model, tokenizer, make_encoder(enc))
    frames = _frames(5)
    for a, b in zip(_rollout(reference, frames), _rollout(policy, frames), strict=True):
        np.testing.assert_array_equal(a.bins, b.bins)
        np.testing.assert_array_equal(a.action, b.action)
        np.testing.assert_array_equal(a.q_values, b.q_values)
        assert a.terminate == b.terminate
    # Loading twice gives the same weights exactly.
    m2, *_ = load_model(tmp_path / "ckpt")
    for (k, v), (k2, v2) in zip(policy.model.state_dict().items(), m2.state_dict().items(),
                                strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_config_holds_everything_needed(tmp_path):
    tokenizer = ActionTokenizer.uniform(["x", "y", "stop"], [-1, -1, 0], [1, 1, 1], 16,
                                        terminate="stop")
    path = make_random_checkpoint(tmp_path / "c", preset="tiny", tokenizer=tokenizer,
                                  state_dim=3)
    config = read_config(path)
    assert config["step"] == 0
    assert config["tokenizer"] == tokenizer.to_config()
    assert config["encoder"] == {"kind": "hash", "dim": 64}
    assert config["image_size"] == [32, 32] and config["history"] == 2
    assert config["state_dim"] == 3 and config["model"]["state_dim"] == 3
    assert config["model"]["action_bins"] == [16, 16, 2]
    assert config["model_id"].startswith("c@0#")
    policy = load_policy(path)
    assert policy.tokenizer.names == ["x", "y", "stop"]
    assert policy.model_id == config["model_id"]
    assert policy.state_dim == 3 and policy.image_size == (32, 32) and policy.history == 2
    policy.reset("go")
    result = policy.act(_frames(1)[0], state=np.zeros(3))
    assert result.bins.shape == (3,) and result.action.shape == (3,)


def test_weights_are_safetensors_not_pickle(tmp_path):
    path = make_random_checkpoint(tmp_path / "c")
    raw = (path / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert "head_weight" in header
    assert not raw.startswith(b"\x80") and b"PK" not in raw[:4]     # no pickle, no zip
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]


def test_random_checkpoints_are_seeded_and_leave_global_rng_alone(tmp_path):
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = make_random_checkpoint(tmp_path / "a", seed=1)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = make_random_checkpoint(tmp_path / "b", seed=1)
    c = make_random_checkpoint(tmp_path / "c", seed=2)
    wa, wb, wc = ((p / "model.safetensors").read_bytes() for p in (a, b, c))
    assert wa == wb and wa != wc
    assert read_config(a)["model_id"] != read_config(c)["model_id"]


def test_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_policy(tmp_path / "empty")
    path = make_random_checkpoint(tmp_path / "c")
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_policy(path)
    path = make_random_checkpoint(tmp_path / "d")
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_policy(path)
    # Weights that do not match the config.
    path = make_random_checkpoint(tmp_path / "e")
    config = json.loads((path / "config.json").read_text())
    config["model"]["d_model"] = 64
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match"):
        load_policy(path)
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["version"] = 99
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="update qt_ros"):
        read_config(tmp_path / "c")


def test_save_refuses_mismatched_tokenizer(tmp_path):
    model = QTransformer(model_config("tiny", instruction_dim=64))
    tokenizer = ActionTokenizer.uniform(["x"], [-1], [1], 8)
    with pytest.raises(ValueError, match="tokenizer bins"):
        save_checkpoint(tmp_path / "x", model, tokenizer, EncoderConfig("hash", 64))


@pytest.mark.parametrize("case", list(MALFORMED))
def test_every_malformed_checkpoint_is_one_clear_error_naming_the_file(tmp_path, case):
    """The cases of `qt-ros bench faults` (not JSON, not UTF-8, wrong types, missing and unknown
    fields, negative and huge sizes, safetensors headers that lie, shapes that do not match)."""
    path = make_random_checkpoint(tmp_path / "c")
    MALFORMED[case](path)
    with pytest.raises(CheckpointError) as error:
        load_policy(path)
    assert str(path / "config.json") in str(error.value) or \
        str(path / "model.safetensors") in str(error.value)


@pytest.mark.parametrize("case,field", [
    ("version a string", "'version'"), ("model missing", "'model'"),
    ("d_model negative", "'model.d_model'"), ("d_model a string", "'model.d_model'"),
    ("num_heads zero", "model.num_heads"), ("mlp_ratio NaN", "'model.mlp_ratio'"),
    ("unknown model field", "model.dmodel"), ("tokenizer bins strings", "'tokenizer.bins'"),
    ("encoder dim mismatch", "'encoder.dim'"), ("header dtype int", "'bin_embedding.weight'"),
    ("d_model 64 (weights 32)", "'frame_pos'"), ("config not UTF-8", "not UTF-8"),
])
def test_errors_name_the_field(tmp_path, case, field):
    path = make_random_checkpoint(tmp_path / "c")
    MALFORMED[case](path)
    with pytest.raises(CheckpointError, match=field.replace("(", r"\(")):
        load_policy(path)


def test_every_model_field_is_type_checked(tmp_path):
    """Checked from the dataclass's annotations: a field added to ModelConfig is covered."""
    path = make_random_checkpoint(tmp_path / "c")
    good = json.loads((path / "config.json").read_text())
    for f in fields(ModelConfig):
        config = json.loads(json.dumps(good))
        config["model"][f.name] = "seven"
        (path / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match=f"'model.{f.name}' must be"):
            load_policy(path)


def test_a_huge_config_is_refused_before_allocating(tmp_path):
    path = make_random_checkpoint(tmp_path / "c")
    config = json.loads((path / "config.json").read_text())
    config["model"]["d_model"] = 65536  # 51.5 GB of float32 if it were built
    (path / "config.json").write_text(json.dumps(config))
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="more than 500,000,000 parameters.*"
                                              + MAX_PARAMETERS_ENV):
        load_policy(path)
    assert time.monotonic() - started < 20


def test_the_parameter_limit_counts_exactly_and_can_be_raised(tmp_path, monkeypatch):
    path = make_random_checkpoint(tmp_path / "c")
    count = sum(p.numel() for p in QTransformer(model_config(
        "tiny", instruction_dim=64)).parameters())
    load_policy(path, max_parameters=count)
    with pytest.raises(CheckpointError, match=f"more than {count - 1:,} parameters"):
        load_policy(path, max_parameters=count - 1)
    monkeypatch.setenv(MAX_PARAMETERS_ENV, str(count - 1))
    with pytest.raises(CheckpointError, match="parameters"):
        load_policy(path)
    load_policy(path, max_parameters=count)  # the argument wins over the environment
    monkeypatch.setenv(MAX_PARAMETERS_ENV, "lots")
    with pytest.raises(CheckpointError, match=MAX_PARAMETERS_ENV):
        load_policy(path)
