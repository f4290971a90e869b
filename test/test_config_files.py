"""The shipped parameter files against the config dataclasses that hold every default.

Each node declares its ROS parameters from one dataclass (``parameter_table``). A node's own
file (``recorder.yaml``, ``policy.yaml``) restates the defaults with comments, so every value in
it must equal the dataclass default; ``sim.yaml`` overrides values on purpose, so its names and
value types are checked. Both fail on a name the node does not declare. No ROS needed: the
nodes' real declarations are checked by test_launch_files.py.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from qt_ros.common.settings import (
    add_arguments,
    defaults,
    from_namespace,
    from_parameters,
    parameter_table,
    yaml_mismatches,
)
from qt_ros.control.policy_config import PolicyConfig
from qt_ros.episodes.recorder import RecorderConfig
from qt_ros.episodes.recorder_config import NOT_PARAMETERS, RecorderNodeConfig
from qt_ros.sim.demonstrator import DemonstratorConfig
from qt_ros.sim.node_configs import DemonstratorNodeConfig, SimRobotNodeConfig
from qt_ros.sim.simulator import SimConfig

REPO = Path(__file__).resolve().parent.parent
CONFIG_FILES = sorted((REPO / "config").glob("*.yaml"))
# node name -> (the dataclass its parameters are declared from, fields that are not parameters)
NODE_CONFIGS: dict[str, tuple[type, tuple[str, ...]]] = {
    "recorder": (RecorderNodeConfig, NOT_PARAMETERS),
    "policy": (PolicyConfig, ()),
    "sim_robot": (SimRobotNodeConfig, ()),
    "demonstrator": (DemonstratorNodeConfig, ()),
}
# A node's own file, which documents every parameter (set, or in a comment) at its default.
PRIMARY_FILE = {"recorder": "recorder.yaml", "policy": "policy.yaml", "sim_robot": "sim.yaml",
                "demonstrator": "sim.yaml"}
DEFAULTS_FILES = {"recorder.yaml", "policy.yaml"}


def sections(path: Path) -> dict[str, dict]:
    """node name -> its ``ros__parameters`` in a parameter file."""
    data = yaml.safe_load(path.read_text()) or {}
    return {node: (section or {}).get("ros__parameters") or {} for node, section in data.items()}


def problems(path: Path, node: str, values: dict) -> list[str]:
    """What is wrong with ``node``'s section of ``path`` (empty when it is right)."""
    cls, not_parameters = NODE_CONFIGS[node]
    found = yaml_mismatches(cls, values, same_defaults=path.name in DEFAULTS_FILES)
    found += [f"'{name}' is not a parameter of {node}" for name in values
              if name in not_parameters]
    return found


SECTIONS = [(path, node) for path in CONFIG_FILES for node in sections(path)]


def test_every_parameter_file_is_checked():
    assert {p.name for p in CONFIG_FILES} >= {"recorder.yaml", "policy.yaml", "sim.yaml"}
    assert {node for _, node in SECTIONS} >= {"recorder", "policy", "sim_robot", "demonstrator"}
    unknown = {f"{path.name}: {node}" for path, node in SECTIONS if node not in NODE_CONFIGS}
    assert not unknown, f"sections for nodes without a config dataclass: {unknown}"


@pytest.mark.parametrize("path,node", SECTIONS, ids=lambda v: getattr(v, "name", v))
def test_parameter_file_matches_the_dataclass(path, node):
    assert not problems(path, node, sections(path)[node])


@pytest.mark.parametrize("node", sorted(PRIMARY_FILE))
def test_own_file_documents_every_parameter(node):
    path = REPO / "config" / PRIMARY_FILE[node]
    cls, not_parameters = NODE_CONFIGS[node]
    commented = set(re.findall(r"^\s*#\s*([a-z_][a-z0-9_]*):", path.read_text(), re.MULTILINE))
    missing = set(parameter_table(cls, skip=not_parameters)) - set(sections(path)[node]) \
        - commented
    assert not missing, f"{path.name} does not document {node}'s {sorted(missing)}"


def test_a_wrong_value_or_name_fails_the_check():
    """Guards the checks above: the same function on edited copies of the shipped files."""
    recorder_yaml = REPO / "config" / "recorder.yaml"
    recorder = dict(sections(recorder_yaml)["recorder"])
    assert not problems(recorder_yaml, "recorder", recorder)
    for wrong in ({"flush_period": recorder["flush_period"] + 1.0},  # another default
                  {"flush_periode": 1.0},                          # a typo
                  {"fsync": "false"},                              # a string, not a bool
                  {"events_topic": "/episode_events"}):            # not a parameter
        assert problems(recorder_yaml, "recorder", {**recorder, **wrong}), wrong

    sim_yaml = REPO / "config" / "sim.yaml"
    demonstrator = dict(sections(sim_yaml)["demonstrator"])
    assert demonstrator["noise"] != DemonstratorNodeConfig.noise  # overrides are allowed here
    assert not problems(sim_yaml, "demonstrator", demonstrator)
    assert problems(sim_yaml, "demonstrator", {**demonstrator, "noise": "0.002"})
    assert problems(sim_yaml, "demonstrator", {**demonstrator, "nois": 0.002})


# ------------------------------------------------------------------ one default, everywhere

@pytest.mark.parametrize("node", sorted(NODE_CONFIGS))
def test_declared_parameters_read_back_as_the_defaults(node):
    """What a node declares (parameter_table), read back as rclpy returns it, is the
    dataclass's default config: the ROS conventions ([""], "") are undone."""
    cls, not_parameters = NODE_CONFIGS[node]
    table = parameter_table(cls, skip=not_parameters)
    assert all(description for _, description in table.values()), "a parameter lacks a text"
    values = {name: default for name, (default, _) in table.items()}
    assert from_parameters(cls, values) == cls()


def test_node_configs_build_the_library_configs_with_their_defaults():
    assert SimRobotNodeConfig().sim_config() == SimConfig()
    assert DemonstratorNodeConfig().sim_config() == SimConfig()
    assert DemonstratorNodeConfig().demonstrator_config() == DemonstratorConfig()
    node = DemonstratorNodeConfig(noise=0.002, failure_rate=0.5)
    assert node.demonstrator_config() == DemonstratorConfig(noise=0.002, failure_rate=0.5)
    assert SimRobotNodeConfig(control_rate=20.0).sim_config().control_period == 0.05
    with pytest.raises(ValueError, match="control_rate"):
        SimRobotNodeConfig(control_rate=0.0)
    with pytest.raises(ValueError, match="control_rate"):
        DemonstratorNodeConfig(control_rate=-1.0)


def test_recorder_node_config_is_a_recorder_config():
    """The node hands its config to EpisodeRecorder: the recorder's fields and defaults are
    the node parameters' (one list, not two)."""
    assert issubclass(RecorderNodeConfig, RecorderConfig)
    node_defaults = defaults(RecorderNodeConfig)
    assert {k: node_defaults[k] for k in defaults(RecorderConfig)} == defaults(RecorderConfig)
    values = {name: default for name, (default, _) in
              parameter_table(RecorderNodeConfig, skip=NOT_PARAMETERS).items()}
    values["extra_topics"] = ["", "/tf:tf2_msgs/msg/TFMessage"]
    config = from_parameters(RecorderNodeConfig, values, events_topic="/ns/episode_events")
    assert config.extra_topics == ("/tf:tf2_msgs/msg/TFMessage",)
    assert config.events_topic == "/ns/episode_events"


def test_command_line_options_come_from_the_fields():
    import argparse

    @dataclasses.dataclass
    class Example:
        name: str = "x"
        betas: tuple[float, float] = (0.9, 0.999)
        names: tuple[str, ...] = ()
        on: bool = True

    parser = argparse.ArgumentParser()
    add_arguments(parser, Example)
    assert from_namespace(Example, parser.parse_args([])) == Example()
    parsed = from_namespace(Example, parser.parse_args(
        ["--betas", "0.5", "0.6", "--names", "a", "b", "--no-on"]))
    assert parsed == Example(betas=(0.5, 0.6), names=("a", "b"), on=False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--betas", "0.5"])
