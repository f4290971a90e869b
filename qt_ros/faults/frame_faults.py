"""Malformed frames into running policy nodes (``qt-ros bench faults --only frames``).

Two policy nodes run in their own processes, started as ``ros2 run`` starts them: one subscribed
to raw frames, one to compressed, both enabled (``start_enabled``) with a random ``tiny``
checkpoint, an instruction and ``image_width``/``image_height`` set, on a private ROS domain
with localhost-only discovery (never a robot's). This process sends each kind of malformed frame
of :data:`KINDS` in turn, ``--frames-per-kind`` of each at ``--frame-rate``, and counts per kind:

- ``sent``;
- ``commands`` (arm commands, holds included) and ``policy_steps`` published from the start of
  the kind until ``--gap`` seconds after its last frame (longer than the image timeout, so a
  hold caused by a kind is counted with it);
- ``rejected``: the node's own count for the kind's reason (the ``rejected N of M frames
  received: ...`` line of its statistics at shutdown; None from a node that has no such line);
- ``stderr_lines``: lines the node wrote to stderr in that window that are not its logger's
  (libjpeg's "Corrupt JPEG data: ...", OpenCV's "[ WARN:0@...]").

Then valid frames go to each node (``valid``: commands > 0 shows the zeros above come from
rejection, not from a node that cannot command). ``decoder_limit`` counts, in this process,
JPEGs with one changed byte that still decode without a warning: valid JPEGs of another
picture, which no decoder can tell from the camera's (docs/design.md 5, "Malformed frames").
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_shm.xml"
NAMESPACE = "/qt_ros_faults"
DEFAULTS = {"frames_per_kind": 60, "frame_rate": 30.0, "gap": 0.8, "width": 160, "height": 120,
            "domain_id": None}
LOGGER_LINE = re.compile(r"^\[(DEBUG|INFO|WARN|ERROR|FATAL)\] \[\d+\.\d+\] \[")
STATS_LINE = re.compile(r"rejected (\d+) of (\d+) frames received: (.*)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames-per-kind", type=int, default=DEFAULTS["frames_per_kind"],
                        help="malformed frames sent of each kind")
    parser.add_argument("--frame-rate", type=float, default=DEFAULTS["frame_rate"],
                        help="frames per second while sending")


# ---------------------------------------------------------------- the malformed frames

def _rgb(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A smooth random picture (a JPEG of it is camera-like, not noise)."""
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    a, b, c = rng.uniform(50, 250, 3)
    return np.clip(np.dstack([a * x, b * y, c * (x + y) / 2]), 0, 255).astype(np.uint8)


def _image(array: np.ndarray, encoding: str) -> Any:
    from sensor_msgs.msg import Image

    from qt_ros.data.images import numpy_to_image

    return numpy_to_image(array, encoding, Image)


def _jpeg(rng: np.random.Generator, w: int, h: int) -> tuple[Any, int]:
    """A valid JPEG message and the offset where its entropy-coded data starts."""
    from sensor_msgs.msg import CompressedImage

    from qt_ros.data.images import numpy_to_compressed

    msg = numpy_to_compressed(_rgb(rng, w, h), "jpeg", CompressedImage)
    data = bytes(msg.data)
    sos = data.index(b"\xff\xda")
    return msg, sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


def _nan(rng, w, h):
    return _image(np.full((h, w), np.nan, np.float32), "32FC1")


def _inf(rng, w, h):
    values = rng.uniform(0, 1, (h, w)).astype(np.float32)
    values[rng.random((h, w)) < 0.01] = np.inf
    return _image(values, "32FC1")


def _depth_in_metres(rng, w, h):
    return _image(rng.uniform(0.3, 4.0, (h, w)).astype(np.float32), "32FC1")


def _short_data(rng, w, h):
    msg = _image(_rgb(rng, w, h), "rgb8")
    msg.data = bytes(msg.data)[: len(msg.data) // 2]
    return msg


def _wrong_resolution(rng, w, h):
    return _image(_rgb(rng, 2 * w, 2 * h), "rgb8")


def _unsupported_encoding(rng, w, h):
    msg = _image(_rgb(rng, w, h), "rgb8")
    msg.encoding = "yuv422_yuy2"
    return msg


def _corrupt_jpeg(rng, w, h):
    """256 random bytes over the entropy-coded data (a damaged transfer, not one flipped bit)."""
    msg, scan = _jpeg(rng, w, h)
    data = bytearray(msg.data)
    start = int(rng.integers(scan, max(scan + 1, len(data) - 2 - 256)))
    data[start:start + 256] = rng.integers(0, 256, 256).astype(np.uint8).tobytes()
    msg.data = bytes(data[:len(msg.data)])
    return msg


def _truncated_jpeg(rng, w, h):
    msg, scan = _jpeg(rng, w, h)
    msg.data = bytes(msg.data)[: int(rng.integers(scan, len(msg.data) - 2))]
    return msg


def _not_an_image(rng, w, h):
    msg, _ = _jpeg(rng, w, h)
    msg.data = rng.integers(0, 256, len(msg.data)).astype(np.uint8).tobytes()
    return msg


# kind -> (transport, the node's rejection reason, builder(rng, width, height) -> message)
KINDS: dict[str, tuple[str, str, Callable]] = {
    "nan_32fc1": ("raw", "nan", _nan),
    "inf_32fc1": ("raw", "infinite", _inf),
    "depth_in_metres_32fc1": ("raw", "range", _depth_in_metres),
    "short_data": ("raw", "size", _short_data),
    "wrong_resolution": ("raw", "resolution", _wrong_resolution),
    "unsupported_encoding": ("raw", "encoding", _unsupported_encoding),
    "corrupt_jpeg": ("compressed", "corrupt", _corrupt_jpeg),
    "truncated_jpeg": ("compressed", "truncated", _truncated_jpeg),
    "not_an_image": ("compressed", "format", _not_an_image),
}
TRANSPORTS = ("raw", "compressed")


def decoder_limit(count: int, seed: int, w: int, h: int) -> dict:
    """JPEGs with one byte of entropy-coded data changed: how many the decoder still takes."""
    from qt_ros.data.images import ImageConversionError, compressed_to_numpy

    rng = np.random.default_rng(seed + 1)
    rejected = 0
    for _ in range(count):
        msg, scan = _jpeg(rng, w, h)
        data = bytearray(msg.data)
        data[int(rng.integers(scan, len(data) - 2))] ^= int(rng.integers(1, 256))
        msg.data = bytes(data)
        try:
            compressed_to_numpy(msg)
        except ImageConversionError:
            rejected += 1
    return {"jpeg_one_byte_changed": {"sent": count, "rejected": rejected,
                                      "decoded_without_warning": count - rejected}}


# ---------------------------------------------------------------- the nodes and the storm

class NodeProcess:
    """One policy node in its own process; stdout and stderr in files of ``directory``."""

    def __init__(self, transport: str, checkpoint: str, w: int, h: int, env: dict,
                 directory: Path):
        self.transport = transport
        self.namespace = f"{NAMESPACE}/{transport}"
        self.stderr_path = directory / f"{transport}.stderr"
        params = {"checkpoint": checkpoint, "start_enabled": "true", "image_transport": transport,
                  "image_width": w, "image_height": h}
        args = [sys.executable, "-m", "qt_ros.nodes.policy_node", "--ros-args",
                "-r", f"__ns:={self.namespace}"]
        for name, value in params.items():
            args += ["-p", f"{name}:={value}"]
        with open(directory / f"{transport}.stdout", "wb") as out, \
                open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(args, env=env, stdout=out, stderr=err,
                                          start_new_session=True)

    def stderr(self, start: int = 0, end: int | None = None) -> str:
        data = self.stderr_path.read_bytes()
        return data[start:end].decode(errors="replace")

    def stderr_size(self) -> int:
        return self.stderr_path.stat().st_size

    def stop(self) -> int | None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGINT)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode

    def rejections(self) -> dict[str, int] | None:
        """The node's rejection counts per reason, from its last statistics line."""
        found = [m for m in map(STATS_LINE.search, self.stderr().splitlines()) if m]
        if not found:
            return None
        pairs = (item.rsplit(" ", 1) for item in found[-1].group(3).split(", "))
        return {reason: int(n) for reason, n in pairs}


def stray_lines(text: str) -> list[str]:
    """The lines of ``text`` that the node's logger did not write."""
    return [line for line in text.splitlines() if line.strip() and not LOGGER_LINE.match(line)]


class Injector:
    """This process's ROS node: publishes frames and the instruction to both policy nodes and
    timestamps every arm command and policy step they publish."""

    def __init__(self, domain_id: int):
        import rclpy
        from geometry_msgs.msg import TwistStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String

        from qt_ros.msg import PolicyStep
        from qt_ros.nodes.qos import INSTRUCTION_QOS, LATEST_SENSOR_QOS

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("frame_faults", context=self.context)
        self.received: dict[str, list[tuple[float, str]]] = {t: [] for t in TRANSPORTS}
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.images, self._keep = {}, []
        for transport in TRANSPORTS:
            ns = f"{NAMESPACE}/{transport}"
            msg_type, topic = ((Image, "image") if transport == "raw"
                               else (CompressedImage, "image/compressed"))
            self.images[transport] = self.node.create_publisher(msg_type, f"{ns}/{topic}",
                                                                LATEST_SENSOR_QOS)
            instruction = self.node.create_publisher(String, f"{ns}/instruction", INSTRUCTION_QOS)
            instruction.publish(String(data="pick up the red block"))
            for msg_type, topic in ((TwistStamped, "arm_command"), (PolicyStep, "policy_step")):
                self._keep.append(self.node.create_subscription(
                    msg_type, f"{ns}/{topic}", self._store(transport, topic), reliable))
            self._keep.append(instruction)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _store(self, transport: str, topic: str) -> Callable:
        return lambda msg: self.received[transport].append((time.monotonic(), topic))

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - shutting down
                return

    def connected(self, transport: str) -> bool:
        return (self.images[transport].get_subscription_count() > 0
                and self.node.count_publishers(f"{NAMESPACE}/{transport}/arm_command") > 0)

    def send(self, transport: str, messages: list, rate: float) -> float:
        """Publish ``messages`` at ``rate``; returns the time of the last one."""
        period = 1.0 / rate
        next_time = time.monotonic()
        for msg in messages:
            next_time += period
            msg.header.stamp = self.node.get_clock().now().to_msg()
            msg.header.frame_id = "camera"
            self.images[transport].publish(msg)
            time.sleep(max(0.0, next_time - time.monotonic()))
        return time.monotonic()

    def count(self, transport: str, start: float, end: float) -> dict[str, int]:
        got = [topic for t, topic in list(self.received[transport]) if start <= t < end]
        return {"commands": got.count("arm_command"), "policy_steps": got.count("policy_step")}

    def close(self) -> None:
        self.context.try_shutdown()
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()


def _environment(directory: Path, domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROS_LOG_DIR=str(directory / "ros_log"), PYTHONUNBUFFERED="1",
               RCUTILS_COLORIZED_OUTPUT="0",
               RCUTILS_CONSOLE_OUTPUT_FORMAT="[{severity}] [{time}] [{name}]: {message}")
    if PROFILE.is_file():
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    return env


def _injector(domain_id: int, env: dict[str, str]) -> Injector:
    """The injecting node, with the nodes' discovery range and transport (read at creation)."""
    names = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: env[name] for name in names if name in env})
    try:
        return Injector(domain_id)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _wait_ready(nodes: dict[str, NodeProcess], injector: Injector, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes.values():
            if node.popen.poll() is not None:
                raise RuntimeError(f"the {node.transport} policy node exited: "
                                   f"{node.stderr()[-2000:]}")
        if all("active" in n.stderr() and injector.connected(t) for t, n in nodes.items()):
            time.sleep(0.5)  # the latched instruction
            return
        time.sleep(0.1)
    raise RuntimeError(f"the policy nodes did not start within {timeout:g} s")


def storm(args: argparse.Namespace, nodes: dict[str, NodeProcess], injector: Injector) -> dict:
    """Every kind in turn, then valid frames; counts per kind (``rejected`` filled in later)."""
    from qt_ros.nodes.synthetic_camera import make_frames

    n, rate, gap = (_option(args, k) for k in ("frames_per_kind", "frame_rate", "gap"))
    w, h = _option(args, "width"), _option(args, "height")
    rng = np.random.default_rng(_option(args, "seed", 0))
    kinds = {}
    for kind, (transport, reason, build) in KINDS.items():
        messages = [build(rng, w, h) for _ in range(n)]
        node = nodes[transport]
        start, stderr_start = time.monotonic(), node.stderr_size()
        end = injector.send(transport, messages, rate) + gap
        time.sleep(max(0.0, end - time.monotonic()))
        kinds[kind] = {"transport": transport, "reason": reason, "sent": n,
                       **injector.count(transport, start, end),
                       "stderr_lines": len(stray_lines(node.stderr(stderr_start)))}
    valid = {}
    for transport in TRANSPORTS:
        frames = make_frames(w, h)
        if transport == "raw":
            messages = [_image(frames[i % len(frames)], "rgb8") for i in range(int(2 * rate))]
        else:
            from sensor_msgs.msg import CompressedImage

            from qt_ros.data.images import numpy_to_compressed

            messages = [numpy_to_compressed(frames[i % len(frames)], "jpeg", CompressedImage)
                        for i in range(int(2 * rate))]
        start = time.monotonic()
        end = injector.send(transport, messages, rate) + 0.3
        time.sleep(max(0.0, end - time.monotonic()))
        valid[transport] = {"sent": len(messages), **injector.count(transport, start, end)}
    return {"kinds": kinds, "valid": valid}


def _option(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    value = getattr(args, name, None)
    return DEFAULTS.get(name, default) if value is None else value


def run(args: argparse.Namespace) -> dict:
    """Start the two policy nodes, inject, stop them; the counts (see the module docstring)."""
    from qt_ros.qtransformer.checkpoint import make_random_checkpoint
    from qt_ros.qtransformer.tokenizer import ActionTokenizer

    domain_id = _option(args, "domain_id") or 150 + os.getpid() % 50
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qt_ros_frame_faults_") as tmp:
        directory = Path(tmp)
        # Random weights would end the run at the first "terminate": no terminate dimension.
        checkpoint = make_random_checkpoint(directory / "ckpt", preset="tiny", seed=0,
                                            tokenizer=ActionTokenizer(terminate=None))
        env = _environment(directory, domain_id)
        w, h = _option(args, "width"), _option(args, "height")
        nodes = {t: NodeProcess(t, str(checkpoint), w, h, env, directory) for t in TRANSPORTS}
        injector = _injector(domain_id, env)
        try:
            _wait_ready(nodes, injector)
            report = storm(args, nodes, injector)
        except RuntimeError as e:
            return {"error": str(e)}
        finally:
            injector.close()
            exits = {t: node.stop() for t, node in nodes.items()}
        per_node = {}
        for transport, node in nodes.items():
            stray = stray_lines(node.stderr())
            per_node[transport] = {"exit": exits[transport], "rejected": node.rejections(),
                                   "stderr_lines": len(stray),
                                   "stderr_sample": sorted(set(stray))[:5]}
        for counts in report["kinds"].values():
            rejected = per_node[counts["transport"]]["rejected"]
            counts["rejected"] = None if rejected is None else rejected.get(counts["reason"], 0)
    return {**report, "nodes": per_node,
            "decoder_limit": decoder_limit(_option(args, "frames_per_kind"),
                                           _option(args, "seed", 0), w, h),
            "frames_per_kind": _option(args, "frames_per_kind"),
            "frame_rate": _option(args, "frame_rate"), "image_size": [w, h],
            "seconds": round(time.monotonic() - started, 1)}
