"""A synthetic camera for tests, benchmarks and dry runs: frames at a fixed rate, no hardware.

    python -m qt_ros.nodes.synthetic_camera --rate 30 --width 640 --height 480 \\
        --instruction "pick up the cup" [--transport compressed] [--malformed size]

Publishes ``image`` (``sensor_msgs/Image``, sensor-data QoS) or ``image/compressed``, optionally
the instruction on ``instruction`` (reliable, transient local, once), and ``--malformed`` frames
that a receiver must reject (wrong data size, unknown encoding, corrupt JPEG). On exit it prints
one JSON line: ``{"published": N, "rate": R}``. Topics are remappable with ``--ros-args -r``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from qt_ros.data.images import numpy_to_compressed, numpy_to_image
from qt_ros.nodes.qos import INSTRUCTION_QOS, LATEST_SENSOR_QOS

MALFORMED = ("none", "size", "encoding", "jpeg")


def make_frames(width: int, height: int, count: int = 8) -> list[np.ndarray]:
    """``count`` different RGB frames: a gradient whose phase moves from frame to frame."""
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for k in range(count):
        phase = 2 * np.pi * k / count
        r = 127.5 * (1 + np.sin(2 * np.pi * x / width + phase))
        g = 127.5 * (1 + np.sin(2 * np.pi * y / height + phase))
        b = np.full_like(r, 255.0 * k / max(1, count - 1))
        frames.append(np.stack([r, g, b], axis=-1).astype(np.uint8))
    return frames


class SyntheticCamera(Node):
    def __init__(self, args: argparse.Namespace):
        super().__init__("synthetic_camera")
        self.published = 0
        self._limit = args.count
        self._messages = self._build(args)
        if args.transport == "raw":
            self._pub = self.create_publisher(Image, "image", LATEST_SENSOR_QOS)
        else:
            self._pub = self.create_publisher(CompressedImage, "image/compressed",
                                              LATEST_SENSOR_QOS)
        if args.instruction:
            self._instruction_pub = self.create_publisher(String, "instruction", INSTRUCTION_QOS)
            self._instruction_pub.publish(String(data=args.instruction))
        self._timer = self.create_timer(1.0 / args.rate, self._publish)

    def _build(self, args: argparse.Namespace) -> list:
        frames = make_frames(args.width, args.height)
        if args.transport == "compressed":
            msgs = [numpy_to_compressed(f, "jpeg", CompressedImage) for f in frames]
            if args.malformed == "jpeg":
                for m in msgs:
                    m.data = bytes(m.data[:100]) + b"\x00" * 400  # truncated, corrupt
            return msgs
        msgs = [numpy_to_image(f if args.encoding == "rgb8" else f[..., ::-1], args.encoding, Image)
                for f in frames]
        for m in msgs:
            if args.malformed == "size":
                m.data = bytes(m.data[: len(m.data) // 2])
            elif args.malformed == "encoding":
                m.encoding = "yuv_unknown"
        return msgs

    def _publish(self) -> None:
        msg = self._messages[self.published % len(self._messages)]
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = "camera"
        self._pub.publish(msg)
        self.published += 1
        if self._limit and self.published >= self._limit:
            raise KeyboardInterrupt


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="synthetic_camera", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--encoding", choices=("rgb8", "bgr8"), default="rgb8")
    parser.add_argument("--transport", choices=("raw", "compressed"), default="raw")
    parser.add_argument("--instruction", default="", help="publish this instruction (latched)")
    parser.add_argument("--count", type=int, default=0, help="stop after N frames (0: never)")
    parser.add_argument("--malformed", choices=MALFORMED, default="none",
                        help="publish only frames of this defect")
    ros_args = argv[argv.index("--ros-args"):] if "--ros-args" in argv else []
    args = parser.parse_args(argv[:len(argv) - len(ros_args)])
    rclpy.init(args=["synthetic_camera", *ros_args], signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, _interrupt)
    node = SyntheticCamera(args)
    start = time.monotonic()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        elapsed = max(time.monotonic() - start, 1e-9)
        print(json.dumps({"published": node.published, "rate": node.published / elapsed}),
              flush=True)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
