"""ROS parameters declared from a config dataclass, so each default and description exists once.

``declare_config(node, Config)`` declares one parameter per field (``parameter_table``: the
default and the description, ``ros2 param describe`` shows it), reads the values back (YAML
files and ``-p`` overrides applied by rclpy) and returns them as a ``Config``, whose own checks
then run.
"""

from __future__ import annotations

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
