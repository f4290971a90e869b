"""The package as a user meets it: a valid package.xml that declares every ROS package the code
imports, the layout colcon and ``ros2 run`` need, a core that never imports ROS, and a
``pip install .`` that works in a venv with no ROS at all."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from catkin_pkg.package import InvalidPackage, parse_package

REPO = Path(__file__).resolve().parent.parent
PYTHON_SOURCES = [*REPO.glob("qt_ros/**/*.py"), *REPO.glob("launch/*.py"), *REPO.glob("scripts/*")]
# ROS packages the code may import that a PyPI-only environment does not have.
ROS_ONLY_ON_ROBOTS = {"launch", "launch_ros", "ament_index_python"}


def _ament_packages() -> set[str]:
    names = set()
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        index = Path(prefix) / "share/ament_index/resource_index/packages"
        if index.is_dir():
            names.update(p.name for p in index.iterdir())
    return names


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_package_xml_is_valid_format_3():
    package = parse_package(REPO / "package.xml")  # raises InvalidPackage with the reason
    package.validate()
    assert package.package_format == 3
    assert package.name == "qt_ros"
    assert package.get_build_type() == "ament_cmake"
    assert all("@" in m.email and "." in m.email.split("@")[1] for m in package.maintainers)


def test_invalid_package_xml_is_rejected(tmp_path):
    # Guards the check above: the same parser must fail on a broken manifest.
    broken = (REPO / "package.xml").read_text().replace("<name>qt_ros</name>", "<name></name>")
    (tmp_path / "package.xml").write_text(broken)
    with pytest.raises(InvalidPackage):
        parse_package(tmp_path / "package.xml").validate()


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_every_imported_ros_package_is_declared():
    package = parse_package(REPO / "package.xml")
    declared = {d.name for d in package.build_depends + package.exec_depends
                + package.buildtool_depends + package.test_depends}
    ros_packages = (_ament_packages() | ROS_ONLY_ON_ROBOTS) - {"qt_ros"}
    assert "rclpy" in ros_packages, "run inside the environment (source tools/env.sh)"
    missing = {}
    for path in PYTHON_SOURCES:
        for name in sorted((_imported_top_levels(path) & ros_packages) - declared):
            missing.setdefault(name, []).append(str(path.relative_to(REPO)))
    for msg in [*REPO.glob("msg/*.msg"), *REPO.glob("srv/*.srv")]:
        for line in msg.read_text().splitlines():
            field_type = line.split("#")[0].strip().split(" ")[0]
            if "/" in field_type and field_type.split("/")[0] not in declared:
                missing.setdefault(field_type.split("/")[0], []).append(msg.name)
    assert not missing, f"ROS packages used but not declared in package.xml: {missing}"


# The core: every package but the ROS 2 shell (qt_ros.nodes) and the demo that starts its nodes.
CORE_PACKAGES = ("qtransformer", "episodes", "data", "sim", "control", "commands",
                 "evaluation")
# Verbs that measure the ROS nodes: they import rclpy inside run(), never at import time.
ROS_VERBS = {"qt_ros/commands/bench_record.py", "qt_ros/commands/bench_policy_node.py",
             "qt_ros/commands/bench_faults.py"}


def _core_sources() -> list[Path]:
    return sorted(p for package in CORE_PACKAGES for p in REPO.glob(f"qt_ros/{package}/**/*.py"))


def test_core_never_imports_ros():
    ros = _ament_packages() | ROS_ONLY_ON_ROBOTS
    sources = _core_sources()
    assert len(sources) > 30, "the core packages moved: update CORE_PACKAGES"
    offenders = {str(p.relative_to(REPO)): sorted(_imported_top_levels(p) & (ros - {"qt_ros"}))
                 for p in sources if str(p.relative_to(REPO)) not in ROS_VERBS}
    assert not {k: v for k, v in offenders.items() if v}
    shell = {str(p.relative_to(REPO)): sorted(
        m for m in _imported_modules(p) if m.startswith(("qt_ros.nodes", "qt_ros.msg",
                                                         "qt_ros.srv")))
        for p in sources if str(p.relative_to(REPO)) not in ROS_VERBS}
    assert not {k: v for k, v in shell.items() if v}, "the core imports the ROS shell"
    # And at run time: importing every core module pulls in no ROS module.
    modules = [".".join(p.relative_to(REPO).with_suffix("").parts) for p in sources]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'rclpy'"
            " or m.startswith(('qt_ros.msg', 'qt_ros.srv', 'qt_ros.nodes', 'rosidl')))\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_two_modules_share_a_name():
    names: dict[str, list[str]] = {}
    for path in REPO.glob("qt_ros/**/*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            names.setdefault(path.stem, []).append(str(path.relative_to(REPO)))
    assert not {k: v for k, v in names.items() if len(v) > 1}


def test_layout_for_colcon_and_ros2_run():
    for path in ["qt_ros/__init__.py", "launch", "msg", "srv", "config", "test", "package.xml",
                 "setup.py", "CMakeLists.txt", "README.md", "Makefile", ".ci/run"]:
        assert (REPO / path).exists(), path
    cmake = (REPO / "CMakeLists.txt").read_text()
    for interface in [*REPO.glob("msg/*.msg"), *REPO.glob("srv/*.srv")]:
        assert f'"{interface.relative_to(REPO)}"' in cmake, f"{interface.name} not generated"
    for script in REPO.glob("scripts/*"):
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert f"scripts/{script.name}" in cmake, f"{script.name} not installed to lib/qt_ros"
        module = f"qt_ros/nodes/{script.name}.py"
        assert (REPO / module).exists(), f"{script.name} runs {module}, which does not exist"


def test_interfaces_are_built_into_the_package():
    import qt_ros
    from qt_ros.msg import EpisodeEvent, PolicyStep  # noqa: F401
    from qt_ros.srv import EndEpisode, LabelEpisode, StartEpisode  # noqa: F401
    assert any((Path(p) / "msg").is_dir() for p in qt_ros.__path__)


def test_qt_ros_help_without_torch_or_ros():
    code = ("import sys; from qt_ros.cli import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            "heavy = {'torch', 'rclpy'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "convert" in result.stdout and "train" in result.stdout and "bench" in result.stdout


@pytest.mark.slow
def test_pip_install_without_ros(tmp_path):
    """A fresh venv without ROS wheels: ``pip install .``, ``import qt_ros``, ``qt-ros --help``."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH",
                          "COLCON_PREFIX_PATH", "CMAKE_PREFIX_PATH")}
    clean["PATH"] = f"{env_dir / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    clean["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    def run(*args, cwd=tmp_path):
        result = subprocess.run(args, capture_output=True, text=True, env=clean, cwd=cwd)
        assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    # torch pinned first: it resolves to the local CPU build instead of a CUDA download.
    run(py, "-m", "pip", "install", "-q", "torch==2.13.0")
    run(py, "-m", "pip", "install", "-q", "-c", str(REPO / "requirements/lock.txt"), str(REPO))
    out = run(py, "-c", "import sys, qt_ros, qt_ros.qtransformer.tokenizer, qt_ros.data.images; "
                        "print(qt_ros.__version__, 'rclpy' in sys.modules)")
    assert out.split() == ["0.1.0", "False"]
    assert "rclpy" not in run(py, "-m", "pip", "list")
    help_text = run(str(env_dir / "bin" / "qt-ros"), "--help")
    assert "usage: qt-ros" in help_text and "convert" in help_text


def test_every_package_says_what_it_holds_and_the_readme_maps_it():
    """The tree tells a newcomer where each concept lives: a docstring per package, a README row."""
    readme = (REPO / "README.md").read_text()
    packages = sorted(p.parent for p in REPO.glob("qt_ros/*/__init__.py"))
    assert len(packages) >= 7
    for package in packages:
        tree = ast.parse((package / "__init__.py").read_text())
        assert ast.get_docstring(tree), f"{package.name}/__init__.py has no docstring"
        assert f"`qt_ros/{package.name}/`" in readme, f"README does not map qt_ros/{package.name}/"


def test_no_module_is_too_long_to_read_in_one_sitting():
    long = {str(p.relative_to(REPO)): n for p in REPO.glob("qt_ros/**/*.py")
            if (n := len(p.read_text().splitlines())) > 460}
    assert not long, f"split these by concept (docs/design.md, Layout): {long}"
