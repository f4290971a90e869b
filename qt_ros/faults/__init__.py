"""Fault injection (``qt-ros bench faults``): malformed frames into a running policy node, damaged
bags through conversion and repair, recorder faults (disk full, lost service responses). Each
suite module exposes ``run(args) -> dict`` of counts; it starts real processes where the behaviour
lives in a node, so this package (like ``qt_ros.nodes``) may import rclpy."""

# suite name -> module; each module: ``add_arguments(parser)`` (optional) and ``run(args) -> dict``.
SUITES = {
    "frames": "qt_ros.faults.frame_faults",
    "bags": "qt_ros.faults.bag_faults",
    "recorder": "qt_ros.faults.recorder_faults",
}
