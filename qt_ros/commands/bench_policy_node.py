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
"""

from __future__ import annotations

import argparse
import json
import os
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

    from qt_ros.nodes.policy_node import PolicyNode, PolicyNodeStats

    with tempfile.TemporaryDirectory(prefix="qt_ros_bench_") as tmp:
        checkpoint = _checkpoint(args, Path(tmp))
        camera = subprocess.Popen(
            [sys.executable, "-m", "qt_ros.nodes.synthetic_camera", "--rate", str(args.camera_rate),
             "--width", str(args.width), "--height", str(args.height), "--transport",
             args.transport, "--instruction", "pick up the red block"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
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
            while node.stats.steps == 0 and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.05)
            if node.stats.steps == 0:
                print("bench policy-node: no control step within 60 s: the camera's frames or "
                      "the instruction did not arrive", file=sys.stderr)
                return 1
            _spin(executor, args.warmup, "warm-up")
            node.stats = PolicyNodeStats()
            node_proc, camera_proc = psutil.Process(), psutil.Process(camera.pid)
            node_proc.cpu_percent(), camera_proc.cpu_percent()
            start = time.monotonic()
            _spin(executor, args.duration, "measuring")
            elapsed = time.monotonic() - start
            cpu = {"node_percent": round(node_proc.cpu_percent(), 1),
                   "camera_percent": round(camera_proc.cpu_percent(), 1)}
            stats = node.stats
            node.stats = PolicyNodeStats()  # the final hold below is not part of the run
            policy = node._policy
        finally:
            camera.terminate()
            try:
                camera_out, _ = camera.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                camera.kill()
                camera_out = ""
            node.stop_safely("benchmark done")
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
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
    print(json.dumps(result))
    return 0


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
