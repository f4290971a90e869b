#!/usr/bin/env bash
# Build the qt_ros package (msg/, srv/, Python modules, executables, launch/, config/) with colcon
# against the ROS 2 wheels in .venv. --symlink-install keeps install/ pointing at the sources, so
# only interface or CMake changes need a rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
export VIRTUAL_ENV=$PWD/.venv
export PATH=$VIRTUAL_ENV/bin:$PATH
export AMENT_PREFIX_PATH=$VIRTUAL_ENV CMAKE_PREFIX_PATH=$VIRTUAL_ENV
numpy_include=$(python -c "import numpy, os; print(os.path.realpath(numpy.get_include()))")
python_exe=$(python -c "import sys; print(sys.executable)")
colcon --log-base log build --base-paths . --symlink-install \
  --event-handlers console_direct- console_cohesion+ \
  --cmake-args -DPython3_EXECUTABLE="$python_exe" -DPython3_NumPy_INCLUDE_DIR="$numpy_include" \
  -DBUILD_TESTING=OFF
touch install/.qt_ros-built
