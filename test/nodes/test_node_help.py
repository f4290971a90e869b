"""``ros2 run qt_ros <node> --help``: every node lists its parameters and exits without starting.

Run as ``ros2 run`` runs them (the installed ``scripts/<node>``) and as ``python -m``, with a
temporary HOME: a node that started would create ``~/.ros/log`` (and the recorder its
``~/qt_ros_episodes``), so an empty HOME afterwards shows nothing ran.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from qt_ros.common.settings import parameter_table
from qt_ros.nodes.node_parameters import NODE_CONFIGS

from conftest import REPO, python_args

SCRIPTS = sorted(p.name for p in (REPO / "scripts").iterdir() if p.name.endswith("_node"))


def _table(executable: str) -> dict:
    import importlib

    module, cls_name, *skip = NODE_CONFIGS[executable].split(":")
    config = importlib.import_module(module)
    return parameter_table(getattr(config, cls_name), skip=getattr(config, skip[0]) if skip else ())


def test_every_installed_node_has_a_parameter_table_for_help():
    assert SCRIPTS and SCRIPTS == sorted(NODE_CONFIGS)


@pytest.mark.parametrize("flag, how", [("--help", "ros2 run"), ("-h", "python -m")])
@pytest.mark.parametrize("node", SCRIPTS)
def test_help_lists_the_parameters_and_starts_nothing(node, flag, how, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ROS_LOG_DIR", "ROS_HOME")}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    args = (python_args(str(REPO / "scripts" / node), flag) if how == "ros2 run"
            else python_args("-m", f"qt_ros.nodes.{node}", flag))
    done = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(f"usage: ros2 run qt_ros {node} [--ros-args")
    table = _table(node)
    assert len(table) >= 5
    for name, (_, description) in table.items():
        assert f"\n  {name} (default: " in out, name
        assert description.split()[0] in out
    assert "[INFO]" not in out + done.stderr and done.stderr == ""
    assert list(home.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_help_shows_defaults_as_ros_parameters_take_them():
    from qt_ros.nodes.node_parameters import parameters_help

    text = parameters_help("recorder_node", "summary line")
    assert "\nsummary line\n" in text
    assert '  record_dir (default: "~/qt_ros_episodes")' in text
    assert "  extra_topics (default: [])" in text
    assert "events_topic" not in text  # not a parameter of the recorder
    assert "  control_rate (default: 10.0)" in parameters_help("policy_node")
