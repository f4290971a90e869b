"""Action tokenizer: bin centres, clipping (with a message), terminate, config round trip."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from qt_ros.qtransformer.tokenizer import ActionTokenizer


def test_default_tokenizer_is_the_paper_action_space():
    tok = ActionTokenizer()
    assert tok.names == ["x", "y", "z", "roll", "pitch", "yaw", "gripper", "terminate"]
    assert tok.bins == [256] * 7 + [2] and tok.num_dims == 8 and tok.max_bins == 256
    assert tok.terminate_index == 7


def test_bin_values_include_both_bounds():
    tok = ActionTokenizer.uniform(["a", "b"], [-1.0, 0.0], [1.0, 10.0], num_bins=5)
    np.testing.assert_allclose(tok.bin_values(0), [-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(tok.bin_values(1), [0.0, 2.5, 5.0, 7.5, 10.0])


def test_decode_then_encode_is_the_identity_on_every_bin():
    tok = ActionTokenizer()
    bins = np.stack([np.arange(256) % b for b in tok.bins], axis=1)          # [256, 8]
    np.testing.assert_array_equal(tok.encode(tok.decode(bins)), bins)


def test_encode_picks_the_nearest_bin():
    tok = ActionTokenizer.uniform(["a"], [0.0], [1.0], num_bins=11)         # step 0.1
    values = np.array([[0.0], [0.04], [0.06], [0.149], [0.151], [0.999], [1.0]])
    np.testing.assert_array_equal(tok.encode(values)[:, 0], [0, 0, 1, 1, 2, 10, 10])
    # Decoding gives bin centres, never one bin off.
    np.testing.assert_allclose(tok.decode(np.array([[3]])), [[0.3]])


def test_out_of_range_values_are_clipped_and_reported(caplog):
    tok = ActionTokenizer.uniform(["x", "y"], [-1, -1], [1, 1], num_bins=3)
    with caplog.at_level(logging.WARNING, logger="qt_ros.qtransformer.tokenizer"):
        bins = tok.encode(np.array([[5.0, 0.0], [-7.0, 0.2]]), source="bag_0001")
    np.testing.assert_array_equal(bins, [[2, 1], [0, 1]])
    assert "(x: 2)" in caplog.text and "bag_0001" in caplog.text
    with pytest.raises(ValueError, match="outside the tokenizer bounds"):
        tok.encode(np.array([[5.0, 0.0]]), strict=True)
    _, clipped = tok.encode_with_report(np.array([[5.0, 0.0]]))
    np.testing.assert_array_equal(clipped, [[True, False]])


def test_bad_inputs_raise_clear_errors():
    tok = ActionTokenizer()
    with pytest.raises(ValueError, match="non-finite"):
        tok.encode(np.full(8, np.nan))
    with pytest.raises(ValueError, match="last dimension 8"):
        tok.encode(np.zeros(7))
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(np.array([0, 0, 0, 0, 0, 0, 0, 2]))
    with pytest.raises(ValueError, match="same non-zero length"):
        ActionTokenizer(["a"], [0, 0], [1, 1], [4, 4], None)
    with pytest.raises(ValueError, match="unique"):
        ActionTokenizer(["a", "a"], [0, 0], [1, 1], [4, 4], None)
    with pytest.raises(ValueError, match="low < high"):
        ActionTokenizer(["a"], [1], [1], [4], None)
    with pytest.raises(ValueError, match=">= 2 bins"):
        ActionTokenizer(["a"], [0], [1], [1], None)
    with pytest.raises(ValueError, match="terminate dimension"):
        ActionTokenizer(["a"], [0], [1], [4], "stop")


def test_terminate_and_valid_mask():
    tok = ActionTokenizer.uniform(["x", "stop"], [0, 0], [1, 1], num_bins=4, terminate="stop")
    assert tok.bins == [4, 2]
    assert tok.is_terminate(np.array([3, 1])) and not tok.is_terminate(np.array([3, 0]))
    np.testing.assert_array_equal(tok.is_terminate(np.array([[0, 1], [0, 0]])), [True, False])
    np.testing.assert_array_equal(tok.valid_mask(), [[True] * 4, [True, True, False, False]])
    assert ActionTokenizer.uniform(["x"], [0], [1]).is_terminate(np.array([3])) is False


def test_config_round_trip():
    tok = ActionTokenizer.uniform(["x", "g"], [-0.1, 0], [0.1, 1], num_bins=64)
    again = ActionTokenizer.from_config(tok.to_config())
    assert again.to_config() == tok.to_config()
    with pytest.raises(ValueError, match="unknown action tokenizer field"):
        ActionTokenizer.from_config({**tok.to_config(), "extra": 1})
