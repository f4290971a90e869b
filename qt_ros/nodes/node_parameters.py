"""ROS parameters declared from a config dataclass, so each default and description exists once.

``declare_config(node, Config)`` declares one parameter per field (``parameter_table``: the
default and the description, ``ros2 param describe`` shows it), reads the values back (YAML
files and ``-p`` overrides applied by rclpy) and returns them as a ``Config``, whose own checks
then run. ``parameters_help(executable)`` lists the same table for ``--help``
(:func:`qt_ros.nodes.runner.run_node`), without building the node or starting ROS.
"""

from __future__ import annotations

import importlib
import json
import textwrap
from collections.abc import Iterable
from typing import Any, TypeVar

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from qt_ros.common.settings import from_parameters, parameter_table

T = TypeVar("T")


def declare_config(node: Node, cls: type[T], *, skip: Iterable[str] = (),
                   **overrides: Any) -> T:
    """Declare ``cls``'s fields (but ``skip``) as parameters of ``node``; the values as a
    ``cls``, with ``overrides`` for the skipped fields the node fills in itself."""
    values = {name: node.declare_parameter(
        name, default, ParameterDescriptor(description=description)).value
        for name, (default, description) in parameter_table(cls, skip=skip).items()}
    return from_parameters(cls, values, **overrides)


# Executable -> "module:Config[:FIELDS_THAT_ARE_NOT_PARAMETERS]": what its --help lists.
NODE_CONFIGS = {
    "policy_node": "qt_ros.control.policy_config:PolicyConfig",
    "recorder_node": "qt_ros.episodes.recorder_config:RecorderNodeConfig:NOT_PARAMETERS",
    "sim_robot_node": "qt_ros.sim.node_configs:SimRobotNodeConfig",
    "demonstrator_node": "qt_ros.sim.node_configs:DemonstratorNodeConfig",
}


def parameters_help(executable: str, summary: str = "") -> str:
    """The ``--help`` text of ``ros2 run qt_ros <executable>``: usage, ``summary``, then every
    parameter with its default (as ``-p NAME:=VALUE`` takes it) and description."""
    module, cls_name, *skip_name = NODE_CONFIGS[executable].split(":")
    config = importlib.import_module(module)
    skip = getattr(config, skip_name[0]) if skip_name else ()
    lines = [f"usage: ros2 run qt_ros {executable} [--ros-args -p NAME:=VALUE ... "
             f"--params-file FILE]", ""]
    if summary:
        lines += [summary, ""]
    lines.append("parameters (defaults; the YAML files of config/ set them for the launch "
                 "files):")
    for name, (default, description) in parameter_table(getattr(config, cls_name),
                                                        skip=skip).items():
        lines.append(f"  {name} (default: {_literal(default)})")
        lines += textwrap.wrap(description, 96, initial_indent=" " * 6,
                               subsequent_indent=" " * 6)
    return "\n".join(lines)


def _literal(value: Any) -> str:
    """A default as ROS parameter syntax reads it (an empty string array shows as [])."""
    return "[]" if value == [""] else json.dumps(value)
