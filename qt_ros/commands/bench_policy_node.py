"""``qt-ros bench policy-node``: latency and missed deadlines of the policy node under camera load.

A synthetic camera in another process publishes 640x480 frames at 30 Hz (with the shipped
Fast DDS shared-memory profile, as the launch files use it) and the instruction; the policy node
runs in this process (the same code as ``ros2 run qt_ros policy_node``, so its counters can be
read) at 10 Hz with a randomly initialised ``small`` model on the CPU. After a warm-up, it
measures for ``--duration`` seconds and prints one JSON object:

- ``latency_ms``: image receipt (subscription callback) -> arm command published, p50/p99/max;
- ``model_ms``: the ``Policy.act`` call alone;
- ``image_transport_ms``: camera header stamp -> receipt in the node (DDS, same machine);
- ``missed_deadlines``: control ticks whose command was not published before the next tick;
- ``steps`` / ``expected_steps``, frames received and dropped, CPU use of both processes.

``--with-recorder`` also runs ``recorder_node`` in its own process (as on the robot: camera,
instruction, arm and gripper commands and policy steps into one bag), inside one episode started
before the warm-up and ended after the measurement, and adds ``recorder``: the messages recorded
per topic (from the bag), the messages it dropped (from the catalog) and its CPU use.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_shm.xml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--preset", default="small", help="model preset of the random checkpoint")
    parser.add_argument("--checkpoint", default="", help="use this checkpoint instead")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--control-rate", type=float, default=10.0)
    parser.add_argument("--camera-rate", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--transport", choices=("raw", "compressed"), default="raw")
    parser.add_argument("--with-recorder", action="store_true",
                        help="record an episode with recorder_node (own process) meanwhile")


def _percentiles(values, scale: float = 1e3) -> dict:
    if not len(values):
        return {"p50": None, "p99": None, "max": None, "mean": None}
    a = np.asarray(values, dtype=np.float64) * scale
    return {"p50": round(float(np.percentile(a, 50)), 2),
            "p99": round(float(np.percentile(a, 99)), 2),
            "max": round(float(a.max()), 2), "mean": round(float(a.mean()), 2)}


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    if PROFILE.is_file():
        env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(PROFILE))
    return env


def _checkpoint(args: argparse.Namespace, directory: Path) -> str:
    if args.checkpoint:
        return args.checkpoint
    from qt_ros.qtransformer.checkpoint import make_random_checkpoint
    from qt_ros.qtransformer.tokenizer import ActionTokenizer

    # The paper's 8 action dimensions, but the last one is not a terminate flag: random weights
    # would otherwise end the run at the first step that picks "terminate".
    tokenizer = ActionTokenizer(terminate=None)
    return str(make_random_checkpoint(directory / "ckpt", preset=args.preset,
                                      tokenizer=tokenizer, seed=0))


def run(args: argparse.Namespace) -> int:
    import psutil

    env = _environment()
    os.environ.update(env)  # this process hosts the node: same discovery and transport settings
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from qt_ros.nodes.policy_node import PolicyNode

    with tempfile.TemporaryDirectory(prefix="qt_ros_bench_") as tmp:
        checkpoint = _checkpoint(args, Path(tmp))
        camera = subprocess.Popen(
            [sys.executable, "-m", "qt_ros.nodes.synthetic_camera", "--rate", str(args.camera_rate),
             "--width", str(args.width), "--height", str(args.height), "--transport",
             args.transport, "--instruction", "pick up the red block"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        recorder = RecorderProcess(Path(tmp), args.transport, env) if args.with_recorder else None
        rclpy.init(domain_id=int(env["ROS_DOMAIN_ID"]))
        node = PolicyNode(parameter_overrides=[
            Parameter("checkpoint", value=checkpoint),
            Parameter("device", value=args.device),
            Parameter("control_rate", value=float(args.control_rate)),
            Parameter("image_transport", value=args.transport),
            Parameter("start_enabled", value=True),
        ])
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            if not node.autostart():
                print("bench policy-node: the policy node did not start (see its log above)",
                      file=sys.stderr)
                return 1
            # The camera process needs a few seconds to start; the warm-up begins at the
            # first control step.
            deadline = time.monotonic() + 60
            while node.loop.stats.steps == 0 and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.05)
            if node.loop.stats.steps == 0:
                print("bench policy-node: no control step within 60 s: the camera's frames or "
                      "the instruction did not arrive", file=sys.stderr)
                return 1
            if recorder is not None:
                recorder.start_episode(executor)
            _spin(executor, args.warmup, "warm-up")
            node.loop.reset_stats()
            processes = {"node": psutil.Process(), "camera": psutil.Process(camera.pid)}
            if recorder is not None:
                processes["recorder"] = psutil.Process(recorder.popen.pid)
            for proc in processes.values():
                proc.cpu_percent()
            start = time.monotonic()
            _spin(executor, args.duration, "measuring")
            elapsed = time.monotonic() - start
            cpu = {f"{name}_percent": round(proc.cpu_percent(), 1)
                   for name, proc in processes.items()}
            stats = node.loop.reset_stats()  # the final hold below is not part of the run
            policy = node.loop.policy
            if recorder is not None:
                recorder.end_episode(executor)
        except RecorderFailed as e:
            print(f"bench policy-node: {e}", file=sys.stderr)
            return 1
        finally:
            camera.terminate()
            try:
                camera_out, _ = camera.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                camera.kill()
                camera_out = ""
            node.stop_safely("benchmark done")
            if recorder is not None:
                recorder.stop(executor)
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
        recorded = recorder.report(cpu["recorder_percent"]) if recorder is not None else None
    import torch

    result = {
        "benchmark": "policy-node",
        "model": {"preset": args.preset if not args.checkpoint else None,
                  "model_id": policy.model_id,
                  "parameters": sum(p.numel() for p in policy.model.parameters())
                  if hasattr(policy, "model") else None,
                  "image_size": list(policy.image_size), "history": policy.history},
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "camera": {"width": args.width, "height": args.height, "rate_hz": args.camera_rate,
                   "transport": args.transport,
                   "fastdds_profile": env.get("FASTDDS_DEFAULT_PROFILES_FILE", "")},
        "control_rate_hz": args.control_rate,
        "duration_s": round(elapsed, 2),
        "latency_ms": _percentiles(stats.latency),
        "model_ms": _percentiles(stats.model_time),
        "image_transport_ms": _percentiles(stats.transport),
        "steps": stats.steps,
        "expected_steps": int(elapsed * args.control_rate),
        "missed_deadlines": stats.missed_deadlines,
        "holds": stats.holds,
        "frames_received": stats.frames_received,
        "frames_received_hz": round(stats.frames_received / elapsed, 1),
        "frames_dropped": stats.frames_dropped,
        "cpu": cpu,
        "camera_report": _last_json(camera_out),
        "targets": {"latency_p50_ms": 20, "latency_p99_ms": 40, "missed_deadlines": 0},
    }
    if recorded is not None:
        result["recorder"] = recorded
    print(json.dumps(result))
    return 0


class RecorderFailed(RuntimeError):
    """The recorder did not start or did not answer; the message holds the end of its log."""


class RecorderProcess:
    """``recorder_node`` in its own process, recording the node's topics into ``<tmp>/episodes``
    (its default topics and types: image, instruction, twist arm and float64 gripper commands,
    policy steps), as ``qt-ros bench record`` runs it."""

    def __init__(self, tmp: Path, transport: str, env: dict[str, str]):
        self.record_dir = tmp / "episodes"
        self.log_path = tmp / "recorder.log"
        image = (["-p", "image_topic:=image/compressed",
                  "-p", "image_type:=sensor_msgs/msg/CompressedImage"]
                 if transport == "compressed" else [])
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "qt_ros.nodes.recorder_node", "--ros-args",
                 "-p", f"record_dir:={self.record_dir}", "-p", "max_episode_duration:=0.0",
                 "-p", "min_free_space_mb:=100.0", *image],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._client_node = None  # created by start_episode, in the benchmark's executor
        self._started = 0.0
        self.episode_id = ""
        self.episode_s = 0.0
        self.bag_path: Path | None = None

    def start_episode(self, executor) -> None:
        """Start an episode (waits up to 60 s for the recorder), spinning ``executor``."""
        import rclpy

        from qt_ros.srv import StartEpisode

        self._client_node = rclpy.create_node("bench_policy_node_client")
        executor.add_node(self._client_node)
        response = self._call(executor, StartEpisode, "/recorder/start_episode",
                              StartEpisode.Request(instruction="pick up the red block"))
        self.episode_id = response.episode_id
        self._started = time.monotonic()

    def end_episode(self, executor) -> None:
        from qt_ros.srv import EndEpisode

        response = self._call(executor, EndEpisode, "/recorder/end_episode",
                              EndEpisode.Request(episode_id=self.episode_id, outcome="unknown"))
        self.episode_s = time.monotonic() - self._started
        self.bag_path = Path(response.bag_path)

    def _call(self, executor, srv_type, name: str, request, timeout: float = 60.0):
        client = self._client_node.create_client(srv_type, name)
        deadline = time.monotonic() + timeout
        while not client.service_is_ready() and time.monotonic() < deadline:
            if self.popen.poll() is not None:
                break
            executor.spin_once(timeout_sec=0.05)
        if not client.service_is_ready():
            raise RecorderFailed(f"{name} not available; recorder log:\n{self._log_tail()}")
        future = client.call_async(request)
        while not future.done() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        response = future.result() if future.done() else None
        if response is None or not response.success:
            detail = "no answer" if response is None else response.message
            raise RecorderFailed(f"{name}: {detail}; recorder log:\n{self._log_tail()}")
        return response

    def stop(self, executor) -> None:
        """Stop the recorder: SIGINT (a clean shutdown), SIGKILL if that takes over 15 s."""
        if self._client_node is not None:
            executor.remove_node(self._client_node)
            self._client_node.destroy_node()
            self._client_node = None
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGINT)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()

    def report(self, cpu_percent: float) -> dict:
        """Messages recorded per topic (the bag) and dropped (the catalog) in the episode."""
        from qt_ros.episodes.bag_reader import BagReader
        from qt_ros.episodes.catalog import EpisodeCatalog

        with BagReader.open(self.bag_path) as bag:
            messages = {topic: info.count for topic, info in sorted(bag.topics.items())}
        record = EpisodeCatalog(self.record_dir).get(self.episode_id) or {}
        return {"episode_s": round(self.episode_s, 2), "messages": messages,
                "messages_hz": {t: round(n / self.episode_s, 1) for t, n in messages.items()},
                "dropped": record.get("dropped_messages"), "cpu_percent": cpu_percent}

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def _spin(executor, seconds: float, desc: str) -> None:
    from tqdm import tqdm

    start = time.monotonic()
    end = start + seconds
    with tqdm(total=round(seconds, 1), desc=desc, unit="s", file=sys.stderr,
              bar_format="{desc}: {bar} {n:.0f}/{total:.0f} s") as bar:
        while (now := time.monotonic()) < end:
            executor.spin_once(timeout_sec=min(0.05, end - now))
            bar.update(round(min(now, end) - start, 1) - bar.n)


def _last_json(text: str) -> dict | None:
    for line in reversed((text or "").splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None
