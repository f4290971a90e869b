"""``qt-ros export``: the acting path as ONNX or TorchScript graphs that pick the PyTorch
policy's bins, and run in the policy node's loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qt_ros.cli import main as qt_ros_main
from qt_ros.control.policy_config import ConfigError, PolicyConfig, load_policy
from qt_ros.qtransformer.checkpoint import load_policy as load_checkpoint_policy
from qt_ros.qtransformer.checkpoint import make_random_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("export") / "ckpt", preset="tiny",
                                  image_size=(32, 32), state_dim=3)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_picks_the_bins_of_the_pytorch_policy(checkpoint, fmt, capsys):
    assert qt_ros_main(["export", str(checkpoint), "--format", fmt]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["check"]["observations"] == 100 and result["check"]["same_bins"] == 100
    assert result["check"]["max_q_difference"] < 1e-4
    export = checkpoint / f"export-{fmt}"
    assert json.loads((export / "export.json").read_text())["runtime"] == fmt

    # The policy node's loader takes the export like a checkpoint.
    policy, layout = load_policy(PolicyConfig(checkpoint=str(export), arm_adapter="twist",
                                              state_source="joint_states",
                                              joint_names=("a", "b", "c")))
    reference = load_checkpoint_policy(checkpoint)
    frame = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for p in (policy, reference):
        p.reset("pick up the red block")
    state = np.array([0.1, -0.2, 0.3], np.float32)
    np.testing.assert_array_equal(policy.act(frame, state).bins,
                                  reference.act(frame, state).bins)
    assert fmt in policy.model_id


def test_an_export_on_a_gpu_device_or_a_missing_checkpoint_is_a_clear_error(checkpoint,
                                                                            tmp_path, capsys):
    export = checkpoint / "export-torchscript"
    if not export.exists():
        assert qt_ros_main(["export", str(checkpoint), "--format", "torchscript",
                            "--check", "0"]) == 0
    with pytest.raises(ConfigError, match="set device:=cpu"):
        load_policy(PolicyConfig(checkpoint=str(export), device="cuda"))
    assert qt_ros_main(["export", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
