"""The policy node's parameters: one dataclass, its ROS declarations, the shipped YAML, and the
errors a user meets (each names the parameter), without ROS."""

from __future__ import annotations

import array
from types import SimpleNamespace

import pytest
import yaml

from qt_ros.common.settings import parameter_table
from qt_ros.control.policy_config import (
    DEFAULT_LOWER,
    ConfigError,
    PolicyConfig,
    load_policy,
)

from conftest import REPO

NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper", "terminate"]
TOKENIZER = SimpleNamespace(names=NAMES, low=[-0.05] * 6 + [0.2, 0.0],
                            high=[0.05] * 6 + [0.8, 1.0], terminate="terminate")


def test_sim_yaml_policy_values_are_valid():
    # test/test_config_files.py checks the names and types of every parameter file; this checks
    # that the simulator's policy settings also pass the validation.
    section = yaml.safe_load((REPO / "config/sim.yaml").read_text())["policy"]
    config = PolicyConfig(**section["ros__parameters"])
    assert config.uses_joint_states and config.limits().names[-1] == "gripper"


def test_ros_parameter_table_defaults_and_types():
    table = parameter_table(PolicyConfig)
    assert table["control_rate"] == (10.0, "control steps per second (Hz)")
    assert table["joint_names"][0] == [""]  # a string array ROS can type
    assert table["lower_limits"][0] == list(DEFAULT_LOWER)
    assert isinstance(table["num_threads"][0], int) and table["autostart"][0] is True
    assert all(description for _, description in table.values())


def test_ros_values_are_normalised():
    config = PolicyConfig(joint_names=[""], gripper_joint_names=["a", ""],
                          lower_limits=array.array("d", DEFAULT_LOWER))
    assert config.joint_names == () and config.gripper_joint_names == ("a",)
    assert config.lower_limits == DEFAULT_LOWER and isinstance(config.lower_limits, tuple)
    with pytest.raises(AttributeError):
        config.control_rate = 5.0  # frozen


@pytest.mark.parametrize("params, message", [
    ({"control_rate": 0.0}, "control_rate must be > 0 Hz, got 0.0"),
    ({"control_rate": float("nan")}, "control_rate must be > 0 Hz"),
    ({"max_frame_wait": 0.1}, r"max_frame_wait must be in \[0, control period 0.1 s\), got 0.1"),
    ({"max_frame_wait": -0.01}, "max_frame_wait must be in"),
    ({"trajectory_duration": -1.0}, "trajectory_duration must be >= 0 s"),
    ({"image_transport": "h264"}, "image_transport must be raw or compressed, got 'h264'"),
    ({"state_source": "imu"}, "state_source must be none, joint_states or pose, got 'imu'"),
    ({"arm_adapter": "servo"}, "arm_adapter 'servo' is not one of twist, joint_trajectory"),
    ({"arm_action": "relative"}, "arm_action 'relative' is not one of delta, absolute"),
    ({"float64_array_interface": "effort"}, "float64_array_interface 'effort'"),
    ({"gripper_adapter": "pwm"}, "gripper_adapter 'pwm' is not one of"),
    ({"gripper_adapter": "joint_trajectory"}, "needs gripper_joint_names"),
    ({"arm_dimensions": ["x", "y", "z", "yaw"], "lower_limits": [0] * 5, "upper_limits": [0] * 5,
      "max_change_per_step": [1] * 5}, "arm_adapter 'twist' needs 3 .* or 6 .*got 4"),
    ({"arm_adapter": "joint_trajectory", "joint_names": ["a", "b"]},
     r"needs one joint in joint_names per arm dimension: 6 arm_dimensions but joint_names = "
     r"\['a', 'b'\]"),
    ({"state_source": "joint_states"}, "state_source joint_states needs joint_names"),
    ({"lower_limits": [0.0] * 6}, r"'lower' has 6 values but there are 7 commanded dimensions.*"
     r"\(parameters lower_limits / upper_limits / max_change_per_step, order: x y z roll "
     r"pitch yaw gripper\)"),
    ({"upper_limits": [-1.0] * 7}, "dimension 'x' needs finite lower <= upper"),
    ({"max_change_per_step": [0.0] * 7}, "dimension 'x' needs max_change > 0"),
])
def test_values_are_checked_when_the_config_is_built(params, message):
    with pytest.raises(ConfigError, match=message):
        PolicyConfig(**params)


def test_gripper_parameters_are_unused_without_a_gripper_dimension():
    config = PolicyConfig(gripper_dimension="", gripper_adapter="pwm", lower_limits=[0] * 6,
                          upper_limits=[0] * 6, max_change_per_step=[1] * 6)
    layout = config.resolve(TOKENIZER, 0)
    assert layout.gripper_range is None and layout.index == (0, 1, 2, 3, 4, 5)


def test_resolve_gives_the_commanded_layout():
    config = PolicyConfig(arm_dimensions=["z", "x", "y"], lower_limits=[0] * 4,
                          upper_limits=[0] * 4, max_change_per_step=[1] * 4)
    layout = config.resolve(TOKENIZER, 0)
    assert layout.names == tuple(NAMES) and layout.index == (2, 0, 1, 6)
    assert layout.num_arm == 3 and layout.gripper_range == (0.2, 0.8)
    assert config.limits().names == ("z", "x", "y", "gripper")


@pytest.mark.parametrize("params, state_dim, message", [
    ({"arm_dimensions": ["x", "y", "w"], "lower_limits": [0] * 4, "upper_limits": [0] * 4,
      "max_change_per_step": [1] * 4},
     0, r"arm_dimensions: \['w'\] not in the checkpoint's action dimensions"),
    ({"gripper_dimension": "claw"}, 0, r"gripper_dimension: \['claw'\] not in"),
    ({"gripper_dimension": "terminate"}, 0, "the terminate dimension 'terminate' cannot be "
     "commanded"),
    ({}, 3, r"the checkpoint expects a state of 3 values but state_source 'none' gives 0 "
     r"\(set state_source\)"),
    ({"state_source": "pose"}, 0, "expects a state of 0 values but state_source 'pose' gives 7"),
    ({"state_source": "joint_states", "joint_names": ["a", "b"]}, 3,
     "expects a state of 3 values but state_source 'joint_states' gives 2"),
])
def test_checks_against_the_checkpoint(params, state_dim, message):
    config = PolicyConfig(**params)
    with pytest.raises(ConfigError, match=message):
        config.resolve(TOKENIZER, state_dim)


def test_load_policy_names_a_missing_or_unreadable_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="parameter 'checkpoint' is empty: set it"):
        load_policy(PolicyConfig())
    with pytest.raises(ConfigError, match=f"cannot load checkpoint '{tmp_path / 'missing'}'"):
        load_policy(PolicyConfig(checkpoint=str(tmp_path / "missing")))


def test_load_policy_loads_checks_and_warms_up(tmp_path):
    from qt_ros.qtransformer.checkpoint import make_random_checkpoint

    path = make_random_checkpoint(tmp_path / "ckpt", preset="tiny", seed=0)
    policy, layout = load_policy(PolicyConfig(checkpoint=str(path), warmup_steps=1))
    assert layout.index == (0, 1, 2, 3, 4, 5, 6) and layout.state_dim == 0
    assert policy.instruction == "warm up"  # the warm-up ran
    with pytest.raises(ConfigError, match="expects a state of 0 values but state_source 'pose'"):
        load_policy(PolicyConfig(checkpoint=str(path), state_source="pose"))
