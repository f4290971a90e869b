"""Helpers for the policy node tests: a probe node in the test process, node command lines and
small checkpoints built with the real checkpoint code (random weights, real files)."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String

from qt_ros.nodes.qos import EPISODE_EVENTS_QOS, INSTRUCTION_QOS

from conftest import REPO, python_args

RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                      reliability=ReliabilityPolicy.RELIABLE)
# The nodes' own profiles: the tests talk to them exactly as other nodes do.
LATCHED = INSTRUCTION_QOS
EVENTS = EPISODE_EVENTS_QOS
SENSOR = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                    reliability=ReliabilityPolicy.BEST_EFFORT)
FASTDDS_PROFILE = REPO / "config" / "fastdds_shm.xml"
_names = itertools.count()


class Probe:
    """A ROS node in the test process, spun on a background thread.

    ``collect`` returns a list that fills with ``(monotonic receipt time, message)`` pairs.
    """

    def __init__(self, domain_id: int):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(f"probe{next(_names)}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - shutting down
                if not self.context.ok():
                    return
                raise

    def collect(self, msg_type, topic: str, qos: QoSProfile = RELIABLE) -> list:
        received: list = []

        def store(msg) -> None:
            with self._lock:
                received.append((time.monotonic(), msg))

        self.node.create_subscription(msg_type, topic, store, qos)
        return received

    def publisher(self, msg_type, topic: str, qos: QoSProfile = RELIABLE):
        return self.node.create_publisher(msg_type, topic, qos)

    def instruction(self, text: str, topic: str = "instruction"):
        pub = self.node.create_publisher(String, topic, LATCHED)
        pub.publish(String(data=text))
        return pub

    def call(self, srv_type, name: str, request, timeout: float = 15.0):
        client = self.node.create_client(srv_type, name)
        deadline = time.monotonic() + timeout
        while not client.service_is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {name} not available after {timeout} s")
            time.sleep(0.05)
        future = client.call_async(request)
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no response from {name} after {timeout} s")
            time.sleep(0.01)
        return future.result()

    def matched(self, *topics: str) -> bool:
        """Whether every topic has a publisher (so nothing it sends from now on is missed)."""
        return all(self.node.count_publishers(t) > 0 for t in topics)

    def close(self) -> None:
        self.context.try_shutdown()
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()


def with_fastdds_profile(env: dict[str, str]) -> dict[str, str]:
    """The shipped shared-memory profile, as the launch files use it (if it exists yet)."""
    env = dict(env)
    if FASTDDS_PROFILE.exists():
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(FASTDDS_PROFILE)
    return env


def policy_node_args(checkpoint: Path | str, **params) -> list[str]:
    """Command line of the policy node with ``-p name:=value`` for each parameter."""
    args = python_args("-m", "qt_ros.nodes.policy_node", "--ros-args")
    for name, value in {"checkpoint": str(checkpoint), **params}.items():
        args += ["-p", f"{name}:={_ros_value(value)}"]
    return args


def camera_args(rate: float = 30.0, width: int = 160, height: int = 120, *extra: str) -> list[str]:
    return python_args("-m", "qt_ros.nodes.synthetic_camera", "--rate", str(rate),
                       "--width", str(width), "--height", str(height), *extra)


def _ros_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_ros_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def messages(received: list, since: float = -np.inf) -> list:
    return [m for t, m in list(received) if t >= since]


def make_checkpoint(directory: Path, *, terminate: bool = False, state_dim: int = 0,
                    nan_output: bool = False, state_weight: float | None = None,
                    seed: int = 0) -> Path:
    """A real ``tiny`` checkpoint (random weights) with a few weights set on purpose.

    ``terminate``: the terminate dimension always (True) or never (False) picks "end the
    episode", by its head bias; ``nan_output``: the head biases are NaN, so every Q value is;
    ``state_weight``: every weight of the state projection, so that a huge (finite) state
    overflows to a non-finite output while ordinary states give finite ones.
    """
    import torch

    from qt_ros.qtransformer.checkpoint import load_model, make_random_checkpoint, save_checkpoint

    overrides = {"state_dim": state_dim} if state_dim else {}
    path = make_random_checkpoint(directory, preset="tiny", seed=seed, **overrides)
    model, tokenizer, encoder_config, config = load_model(path)
    with torch.no_grad():
        t = tokenizer.terminate_index
        model.head_bias[t, :2] = torch.tensor([-50.0, 50.0] if terminate else [50.0, -50.0])
        if nan_output:
            model.head_bias.fill_(float("nan"))
        if state_weight is not None:
            model.state_token.weight.fill_(state_weight)
    return save_checkpoint(path, model, tokenizer, encoder_config, step=0,
                           extra=config.get("extra"))
