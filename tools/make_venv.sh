#!/usr/bin/env bash
# Create the development/CI environment: a venv holding ROS 2 Kilted (PyPI wheels), PyTorch (CPU)
# and the project's pinned Python dependencies. Idempotent: does nothing when already complete.
#
# The venv itself lives outside the source tree and .venv is a symlink to it: CMake refuses to
# export targets whose include directories (numpy's headers, found through the venv) lie inside
# the source directory, which is where `colcon build` of this repository runs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd -P)
venv_home=${QT_ROS_VENV_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/qt_ros}
real_venv="$venv_home/venv-$(printf '%s' "$repo" | sha1sum | cut -c1-12)"
stamp=.venv/.qt_ros-deps
lock=requirements/lock.txt
want=$(sha1sum "$lock" tools/make_venv.sh | sha1sum | cut -c1-40)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ -L .venv ] && [ "$(readlink .venv)" != "$real_venv" ]; then rm .venv; fi
if [ -e .venv ] && [ ! -L .venv ]; then
  echo "make_venv: .venv exists and is not a symlink to $real_venv; remove it and rerun" >&2
  exit 1
fi
mkdir -p "$venv_home"
if [ ! -x "$real_venv/bin/python" ]; then
  echo "make_venv: creating $real_venv"
  python3 -m venv "$real_venv"
fi
ln -sfn "$real_venv" .venv
py=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and alone: the pinned version resolves to the local CPU build; anything asking
# for an unpinned torch afterwards is then already satisfied (no CUDA download).
"$py" -m pip install --quiet torch==2.13.0
"$py" -m pip install --quiet -r "$lock"
"$py" tools/fix_ros_wheel_cmake.py
"$py" -m pip install --quiet --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
echo "$want" > "$stamp"
echo "make_venv: ready ($real_venv)"
