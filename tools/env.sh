# Source this file (bash) to use the development environment built by `make env`:
#   source tools/env.sh
# It activates .venv (ROS 2 Kilted wheels, PyTorch), overlays the colcon install/ of qt_ros,
# keeps DDS discovery on this machine, and points Fast DDS at the shared-memory profile.
_qt_ros_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export VIRTUAL_ENV=$_qt_ros_root/.venv
export PATH=$VIRTUAL_ENV/bin:$PATH
export AMENT_PREFIX_PATH=$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
# shellcheck disable=SC1091
source "$_qt_ros_root/install/setup.bash"
# The source tree first: new modules are importable without a colcon rebuild; qt_ros/__init__.py
# extends the package path with install/ for the generated qt_ros.msg / qt_ros.srv.
export PYTHONPATH=$_qt_ros_root${PYTHONPATH:+:$PYTHONPATH}
# Camera frames between processes need the bigger shared-memory segment of this profile.
export FASTDDS_DEFAULT_PROFILES_FILE=${FASTDDS_DEFAULT_PROFILES_FILE:-$_qt_ros_root/config/fastdds_shm.xml}
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export MUJOCO_GL=${MUJOCO_GL:-egl}
unset _qt_ros_root
