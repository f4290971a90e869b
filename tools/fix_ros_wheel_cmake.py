"""Point the ROS 2 PyPI wheels' exported CMake files at this venv's Python and numpy headers.

The wheels are built in a manylinux image, and their exported targets name that image's include
directories (``/opt/python/cp311-cp311/...``). CMake refuses imported targets with non-existent
include paths, so colcon cannot build ``msg/``/``srv/`` against them until the paths are rewritten.
Idempotent: files already pointing at this venv are left untouched.
"""

import pathlib
import sys
import sysconfig

import numpy

BUILD_IMAGE_PYTHON = "/opt/python/cp311-cp311/include/python3.11"
BUILD_IMAGE_NUMPY = "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"


def main() -> int:
    prefix = pathlib.Path(sys.prefix)
    replacements = {
        BUILD_IMAGE_PYTHON: sysconfig.get_paths()["include"],
        BUILD_IMAGE_NUMPY: numpy.get_include(),
    }
    changed = 0
    for path in (prefix / "share").rglob("*.cmake"):
        text = path.read_text(errors="surrogateescape")
        new = text
        for old, replacement in replacements.items():
            new = new.replace(old, replacement)
        if new != text:
            path.write_text(new, errors="surrogateescape")
            changed += 1
    print(f"fix_ros_wheel_cmake: rewrote {changed} CMake file(s) under {prefix / 'share'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
