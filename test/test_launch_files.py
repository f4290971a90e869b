"""Launch files and parameter files, checked without ``launch_ros`` (not installable here).

- Each launch file parses, imports only ``launch`` / ``launch_ros``, declares every launch
  argument it reads, and names executables and parameter files that exist in the package.
- Each launch file is run against a recording stand-in of the launch API (only the standard
  classes it uses), and the resulting nodes' parameters are resolved for a few argument sets.
- The parameter names in ``config/*.yaml`` and in the launch files' overrides are what the real
  nodes declare, and each node's own YAML file documents all of them: every launched node is
  started with its YAML files and asked for its parameters through the ROS parameter services.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import types
from pathlib import Path

import pytest
import yaml
from rcl_interfaces.srv import ListParameters

from conftest import REPO, python_args, wait_for

LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
PARAMETER_FILES = sorted((REPO / "config").glob("*.yaml"))
# The file that documents every parameter of a node (other files may set some of them).
PRIMARY_FILE = {"policy": "policy.yaml", "recorder": "recorder.yaml", "sim_robot": "sim.yaml",
                "demonstrator": "sim.yaml"}
# Start-up values that keep a node from doing real work while its parameters are listed.
QUIET = {"policy": ["autostart:=false"]}
# Declared by every rclpy node, not by our code.
BUILTIN_PARAMETERS = {"use_sim_time", "start_type_description_service"}


def test_launch_files_exist():
    assert {p.name for p in LAUNCH_FILES} >= {"policy.launch.py", "record.launch.py"}


# ------------------------------------------------------------------------- static checks

def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_is_import_free_parsable_and_consistent(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
    assert imported <= {"launch", "launch_ros"}, f"{path.name} imports {imported}"
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description"
               for n in tree.body)
    arguments = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                     and getattr(n.targets[0], "id", "") == "ARGUMENTS")
    used = {c.args[0].value for name in ("LaunchConfiguration", "arg")
            for c in _calls(tree, name) if c.args and isinstance(c.args[0], ast.Constant)}
    assert used <= set(arguments), f"{path.name} reads undeclared arguments {used - set(arguments)}"
    assert set(arguments) <= used, f"{path.name} declares unused {set(arguments) - used}"
    cmake = (REPO / "CMakeLists.txt").read_text()
    for node in _calls(tree, "Node"):
        kw = {k.arg: k.value for k in node.keywords}
        assert kw["package"].value == "qt_ros"
        executable = kw["executable"].value
        assert (REPO / "scripts" / executable).is_file(), executable
        assert f"scripts/{executable}" in cmake, f"{executable} is not installed by CMakeLists"
        assert kw["name"].value in PRIMARY_FILE, f"node {kw['name'].value}: which YAML?"
    for join in _calls(tree, "PathJoinSubstitution"):
        parts = [e.value for e in join.args[0].elts if isinstance(e, ast.Constant)]
        assert (REPO.joinpath(*parts)).is_file(), f"{path.name} names missing file {parts}"


# ------------------------------------------------------------------------- stand-in launch API

class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _Substitution(_Recorded):
    pass


def _stub_modules() -> dict[str, types.ModuleType]:
    """Minimal ``launch`` / ``launch_ros`` that record what the launch file builds."""
    classes = {
        "launch.launch_description": ["LaunchDescription"],
        "launch.actions": ["DeclareLaunchArgument", "SetEnvironmentVariable"],
        "launch.conditions": ["IfCondition", "UnlessCondition"],
        "launch.substitutions": ["LaunchConfiguration", "PathJoinSubstitution",
                                 "PythonExpression", "EnvironmentVariable"],
        "launch_ros.actions": ["Node"],
        "launch_ros.parameter_descriptions": ["ParameterValue"],
        "launch_ros.substitutions": ["FindPackageShare"],
    }
    modules = {"launch": types.ModuleType("launch"), "launch_ros": types.ModuleType("launch_ros")}
    for module, names in classes.items():
        mod = types.ModuleType(module)
        for name in names:
            base = _Substitution if module.endswith("substitutions") else _Recorded
            setattr(mod, name, type(name, (base,), {}))
        modules[module] = mod
    modules["launch"].LaunchDescription = modules["launch.launch_description"].LaunchDescription
    return modules


def _resolve(value, launch_args: dict[str, str]):
    """Evaluate a recorded substitution tree as ``ros2 launch`` would, with the package share
    directory being the source tree (CMake installs launch/ and config/ unchanged)."""
    kind = type(value).__name__
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_resolve(v, launch_args) for v in value)
    if kind == "LaunchConfiguration":
        return launch_args[value.args[0]]
    if kind == "FindPackageShare":
        assert value.args == ("qt_ros",)
        return str(REPO)
    if kind == "PathJoinSubstitution":
        return os.path.join(*[_resolve(v, launch_args) for v in value.args[0]])
    if kind == "PythonExpression":
        return str(eval(_resolve(value.args[0], launch_args)))  # noqa: S307 - like launch does
    if kind == "ParameterValue":
        return value.kwargs["value_type"](_resolve(value.args[0], launch_args))
    raise AssertionError(f"unexpected substitution {kind}")


def _run_launch_file(path: Path, overrides: dict[str, str], monkeypatch) -> dict:
    for name, module in _stub_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    namespace: dict = {"__name__": "launch_file"}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # noqa: S102
    description = namespace["generate_launch_description"]()
    entities = description.args[0]
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities
                if type(e).__name__ == "DeclareLaunchArgument"}
    launch_args = {name: _resolve(default, {}) for name, default in declared.items()}
    unknown = set(overrides) - set(launch_args)
    assert not unknown, f"no launch arguments {unknown} in {path.name}"
    launch_args.update(overrides)
    result = {"env": {}, "nodes": {}}
    for e in entities:
        kind = type(e).__name__
        if kind == "SetEnvironmentVariable":
            result["env"][e.args[0]] = _resolve(e.args[1], launch_args)
        elif kind == "Node":
            condition = e.kwargs.get("condition")
            if condition is not None:
                flag = _resolve(condition.args[0], launch_args).lower()
                assert flag in ("true", "false")
                if (flag == "true") != (type(condition).__name__ == "IfCondition"):
                    continue
            files, params = [], {}
            for p in e.kwargs.get("parameters", []):
                if isinstance(p, dict):
                    params.update({k: _resolve(v, launch_args) if not isinstance(
                        v, (bool, int, float)) else v for k, v in p.items()})
                else:
                    files.append(_resolve(p, launch_args))
            remaps = {_resolve(a, launch_args): _resolve(b, launch_args)
                      for a, b in e.kwargs.get("remappings", [])}
            result["nodes"][e.kwargs["name"]] = {
                "executable": e.kwargs["executable"], "files": files, "params": params,
                "remappings": remaps}
    return result


def test_policy_launch_defaults(monkeypatch):
    out = _run_launch_file(REPO / "launch/policy.launch.py", {"checkpoint": "/ckpt/a"},
                           monkeypatch)
    assert set(out["nodes"]) == {"policy", "recorder"}  # recording on by default
    assert Path(out["env"]["FASTDDS_DEFAULT_PROFILES_FILE"]) == REPO / "config/fastdds_shm.xml"
    policy, recorder = out["nodes"]["policy"], out["nodes"]["recorder"]
    assert policy["files"] == [str(REPO / "config/policy.yaml")]
    assert recorder["files"] == [str(REPO / "config/recorder.yaml")]
    assert policy["params"]["checkpoint"] == "/ckpt/a"
    assert policy["params"]["control_rate"] == 10.0
    assert isinstance(policy["params"]["control_rate"], float)
    assert policy["remappings"]["image"] == "/camera/image_raw"
    assert policy["remappings"]["arm_command"] == "/servo_node/delta_twist_cmds"
    assert recorder["params"]["record_dir"] == "~/qt_ros_episodes"
    assert recorder["params"]["image_topic"] == "/camera/image_raw"
    assert recorder["params"]["image_type"] == "sensor_msgs/msg/Image"
    assert recorder["params"]["arm_command_type"] == "geometry_msgs/msg/TwistStamped"
    assert recorder["params"]["gripper_command_type"] == "std_msgs/msg/Float64"
    for node in out["nodes"].values():
        assert all(Path(f).is_file() for f in node["files"])


def test_policy_launch_arguments_reach_both_nodes(monkeypatch):
    out = _run_launch_file(REPO / "launch/policy.launch.py", {
        "checkpoint": "/ckpt/b", "control_rate": "3", "device": "cuda",
        "camera_topic": "/cam/color", "image_transport": "compressed",
        "arm_adapter": "joint_trajectory", "gripper_adapter": "float64_array",
        "arm_command_topic": "/arm_controller/joint_trajectory", "record_dir": "/data/eps",
    }, monkeypatch)
    policy, recorder = out["nodes"]["policy"], out["nodes"]["recorder"]
    assert policy["params"]["control_rate"] == 3.0  # "3" is a float parameter, not an int
    assert policy["params"]["device"] == "cuda"
    assert policy["params"]["image_transport"] == "compressed"
    assert policy["remappings"]["image/compressed"] == "/cam/color/compressed"
    assert policy["remappings"]["arm_command"] == "/arm_controller/joint_trajectory"
    assert recorder["params"]["image_topic"] == "/cam/color/compressed"
    assert recorder["params"]["image_type"] == "sensor_msgs/msg/CompressedImage"
    assert recorder["params"]["arm_command_topic"] == "/arm_controller/joint_trajectory"
    assert recorder["params"]["arm_command_type"] == "trajectory_msgs/msg/JointTrajectory"
    assert recorder["params"]["gripper_command_type"] == "std_msgs/msg/Float64MultiArray"
    assert recorder["params"]["record_dir"] == "/data/eps"
    no_record = _run_launch_file(REPO / "launch/policy.launch.py", {"record": "false"},
                                 monkeypatch)
    assert set(no_record["nodes"]) == {"policy"}


def test_record_launch_runs_the_recorder_alone(monkeypatch):
    out = _run_launch_file(REPO / "launch/record.launch.py",
                           {"record_dir": "/demos", "camera_topic": "/wrist/image"}, monkeypatch)
    assert set(out["nodes"]) == {"recorder"}
    recorder = out["nodes"]["recorder"]
    assert recorder["params"]["record_dir"] == "/demos"
    assert recorder["params"]["image_topic"] == "/wrist/image"
    assert recorder["params"]["source"] == "demonstration"
    assert Path(out["env"]["FASTDDS_DEFAULT_PROFILES_FILE"]).is_file()


# ------------------------------------------------------------------------- real nodes

def _yaml_parameters(path: Path, node: str) -> tuple[set[str], set[str]]:
    """(set keys, keys only documented in comments) of ``node`` in a parameter file."""
    data = yaml.safe_load(path.read_text())
    keys = set(data[node]["ros__parameters"])
    commented = set(re.findall(r"^\s*#\s*([a-z_][a-z0-9_]*):", path.read_text(), re.MULTILINE))
    return keys, commented - keys


def _launched_nodes(monkeypatch) -> dict[str, str]:
    """Node name -> executable, over every launch file (all optional nodes switched on)."""
    nodes = {}
    for path in LAUNCH_FILES:
        overrides = {"checkpoint": "/ckpt"} if "checkpoint" in path.read_text() else {}
        if '"demonstrator"' in path.read_text():
            overrides["demonstrator"] = "true"
        for name, node in _run_launch_file(path, overrides, monkeypatch)["nodes"].items():
            nodes[name] = node["executable"]
    return nodes


@pytest.fixture
def declared_parameters(ros_env, spawn, tmp_path, monkeypatch):
    """Start every launched node with the YAML files that configure it; ask it for its
    parameter names through the ROS parameter services."""
    from policy_node_support import Probe

    probe = Probe(int(ros_env["ROS_DOMAIN_ID"]))
    procs = {}
    for name, executable in _launched_nodes(monkeypatch).items():
        files = [f for f in PARAMETER_FILES if name in (yaml.safe_load(f.read_text()) or {})]
        args = python_args(str(REPO / "scripts" / executable), "--ros-args")
        for f in files:
            args += ["--params-file", str(f)]
        for value in [f"record_dir:={tmp_path / name}", *QUIET.get(name, [])]:
            if name == "recorder" or not value.startswith("record_dir"):
                args += ["-p", value]
        procs[name] = spawn(args, name=name)
    result = {}
    try:
        for name, proc in procs.items():
            def listed(name=name, proc=proc):
                assert proc.alive(), proc.output()
                try:
                    return probe.call(ListParameters, f"/{name}/list_parameters",
                                      ListParameters.Request(), timeout=1.0)
                except TimeoutError:
                    return None
            response = wait_for(listed, timeout=60, what=f"the parameters of {name}")
            result[name] = set(response.result.names) - BUILTIN_PARAMETERS
    finally:
        probe.close()
    return result


@pytest.mark.ros
def test_parameter_files_and_launch_overrides_match_the_nodes(declared_parameters, monkeypatch):
    assert {"policy", "recorder"} <= set(declared_parameters)
    for path in PARAMETER_FILES:
        for name, section in (yaml.safe_load(path.read_text()) or {}).items():
            assert name in declared_parameters, f"{path.name} configures unknown node {name}"
            keys = set(section["ros__parameters"])
            unknown = keys - declared_parameters[name]
            assert not unknown, f"{path.name} sets parameters {name} does not declare: {unknown}"
    for name, declared in declared_parameters.items():
        keys, commented = _yaml_parameters(REPO / "config" / PRIMARY_FILE[name], name)
        undocumented = declared - keys - commented
        assert not undocumented, f"{PRIMARY_FILE[name]} does not document {name}'s {undocumented}"
    for path in LAUNCH_FILES:
        for name, node in _run_launch_file(path, {}, monkeypatch)["nodes"].items():
            unknown = set(node["params"]) - declared_parameters[name]
            assert not unknown, f"{path.name} sets parameters {name} does not declare: {unknown}"
