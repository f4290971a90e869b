"""``qt-ros bench record``: does the recorder keep every message of a camera-rate stream?

Starts ``recorder_node`` in its own process, publishes 640x480 rgb8 images at 30 Hz (sensor-data
QoS, like a camera driver) and the policy's commands at 10 Hz (``PolicyStep``, arm twist, gripper)
from this process for ``--duration`` seconds inside one episode, ends the episode and counts, in
the bag, what arrived. Prints one JSON object: messages published / recorded / dropped per
stream, the recorder's CPU use (percent of one core, its whole process) and memory, the bag's size
and the write rate. Uses the package's Fast DDS shared-memory profile unless ``--transport
default``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "config" / "fastdds_shm.xml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of publishing")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--image-rate", type=float, default=30.0, help="Hz")
    parser.add_argument("--command-rate", type=float, default=10.0, help="Hz")
    parser.add_argument("--transport", choices=("shm", "default"), default="shm",
                        help="shm: config/fastdds_shm.xml (16 MB segment); default: Fast DDS's")
    parser.add_argument("--compression", choices=("none", "zstd"), default="none")
    parser.add_argument("--record-dir", help="keep the bag here (default: a temporary directory)")


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(120, 200)))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if args.transport == "shm":
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    else:
        env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    if args.transport == "shm":
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    else:
        os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    tmp = None
    record_dir = Path(args.record_dir) if args.record_dir else \
        Path(tmp := tempfile.mkdtemp(prefix="qt_ros_bench_record_"))
    log = open(record_dir.parent / f".{record_dir.name}.recorder.log", "wb")  # noqa: SIM115
    recorder = subprocess.Popen(
        [sys.executable, "-m", "qt_ros.nodes.recorder_node", "--ros-args",
         "-p", f"record_dir:={record_dir}", "-p", f"compression:={args.compression}",
         "-p", f"max_episode_duration:={args.duration + 60}", "-p", "min_free_space_mb:=100.0"],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        result = _bench(args, recorder, record_dir)
    except Exception as exc:  # noqa: BLE001 - report, with the recorder's log
        log.flush()
        text = (record_dir.parent / f".{record_dir.name}.recorder.log").read_text(errors="replace")
        print(f"qt-ros bench record: {type(exc).__name__}: {exc}\nrecorder log:\n{text[-3000:]}",
              file=sys.stderr)
        return 1
    finally:
        if recorder.poll() is None:
            os.killpg(recorder.pid, signal.SIGINT)
            try:
                recorder.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(recorder.pid, signal.SIGKILL)
        log.close()
        (record_dir.parent / f".{record_dir.name}.recorder.log").unlink(missing_ok=True)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0


def _bench(args: argparse.Namespace, recorder: subprocess.Popen, record_dir: Path) -> dict:
    import rclpy
    from geometry_msgs.msg import TwistStamped
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64

    from qt_ros.episodes.bag_reader import BagReader
    from qt_ros.msg import PolicyStep
    from qt_ros.srv import EndEpisode, StartEpisode

    rclpy.init()
    node = Node("bench_record_publisher")
    try:
        image_pub = node.create_publisher(Image, "image", qos_profile_sensor_data)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        step_pub = node.create_publisher(PolicyStep, "policy_step", reliable)
        arm_pub = node.create_publisher(TwistStamped, "arm_command", reliable)
        grip_pub = node.create_publisher(Float64, "gripper_command", reliable)
        start = node.create_client(StartEpisode, "/recorder/start_episode")
        end = node.create_client(EndEpisode, "/recorder/end_episode")

        def call(client, request, timeout=30.0):
            if not client.wait_for_service(timeout_sec=timeout):
                raise RuntimeError(f"service {client.srv_name} not available "
                                   f"(recorder alive: {recorder.poll() is None})")
            future = client.call_async(request)
            rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
            if future.result() is None:
                raise RuntimeError(f"no answer from {client.srv_name}")
            return future.result()

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
                p.get_subscription_count() for p in (image_pub, step_pub, arm_pub, grip_pub)):
            rclpy.spin_once(node, timeout_sec=0.1)
        response = call(start, StartEpisode.Request(instruction="bench"))
        if not response.success:
            raise RuntimeError(response.message)
        time.sleep(0.5)

        # One serialized frame, its stamp patched per message (a fresh 900 kB Python message
        # each time would measure the publisher, not the recorder).
        h, w = args.height, args.width
        frame = Image(height=h, width=w, encoding="rgb8", step=w * 3)
        frame.header.frame_id = "camera"
        frame.data = bytes(random.Random(0).randbytes(h * w * 3))
        buffer = bytearray(serialize_message(frame))
        step = PolicyStep(action_bins=[128] * 7 + [0], action=[0.0] * 8,
                          dimension_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper",
                                           "terminate"], q_values=[0.5] * 8, model_id="bench")
        proc = psutil.Process(recorder.pid)
        cpu0, wall0 = proc.cpu_times(), time.perf_counter()
        stamps: set[tuple[int, int]] = set()
        n_images = n_commands = 0
        image_period, command_period = 1.0 / args.image_rate, 1.0 / args.command_rate
        t0 = time.perf_counter()
        next_image, next_command = t0, t0 + 0.005
        peak_rss = 0
        while True:
            now = time.perf_counter()
            if now - t0 >= args.duration:
                break
            if now >= next_image:
                sec, nsec = divmod(time.time_ns(), 1_000_000_000)
                struct.pack_into("<iI", buffer, 4, sec, nsec)  # header.stamp after CDR header
                image_pub.publish(bytes(buffer))
                stamps.add((sec, nsec))
                n_images += 1
                next_image += image_period
            if now >= next_command:
                stamp = node.get_clock().now().to_msg()
                step.header.stamp = stamp
                step_pub.publish(step)
                arm = TwistStamped()
                arm.header.stamp = stamp
                arm_pub.publish(arm)
                grip_pub.publish(Float64(data=0.5))
                n_commands += 1
                next_command += command_period
                peak_rss = max(peak_rss, proc.memory_info().rss)
            time.sleep(max(0.0, min(next_image, next_command) - time.perf_counter()))
        elapsed = time.perf_counter() - t0
        time.sleep(1.0)  # let the last messages arrive
        cpu1, wall1 = proc.cpu_times(), time.perf_counter()
        response = call(end, EndEpisode.Request(outcome="success"))
        if not response.success:
            raise RuntimeError(response.message)
        bag_path = Path(response.bag_path)
    finally:
        node.destroy_node()
        rclpy.shutdown()

    recorded_stamps = set()
    with BagReader.open(bag_path) as bag:
        counts = {t: i.count for t, i in bag.topics.items()}
        for *_, data in bag.messages(["/image"]):
            sec, nsec = struct.unpack_from("<iI", data, 4)
            recorded_stamps.add((sec, nsec))
    size = sum(f.stat().st_size for f in bag_path.iterdir() if f.is_file())
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (wall1 - wall0) * 100
    images_recorded = len(recorded_stamps & stamps)
    commands_recorded = min(counts.get("/policy_step", 0), counts.get("/arm_command", 0),
                            counts.get("/gripper_command", 0))
    return {
        "benchmark": "record",
        "duration_s": round(elapsed, 2),
        "image": f"{args.width}x{args.height} rgb8",
        "transport": "fastdds_shm.xml (16 MB SHM)" if args.transport == "shm" else "default",
        "compression": args.compression,
        "images_published": n_images,
        "images_recorded": images_recorded,
        "images_dropped": n_images - images_recorded,
        "image_rate_hz": round(n_images / elapsed, 2),
        "commands_published": {"policy_step": n_commands, "arm_command": n_commands,
                               "gripper_command": n_commands},
        "commands_recorded": {k.strip("/"): counts.get(k, 0)
                              for k in ("/policy_step", "/arm_command", "/gripper_command")},
        "commands_dropped": n_commands - commands_recorded,
        "recorder_cpu_percent_of_one_core": round(cpu, 1),
        "recorder_peak_rss_mb": round(peak_rss / 1e6, 1),
        "bag_mb": round(size / 1e6, 1),
        "write_mb_per_s": round(size / 1e6 / elapsed, 1),
        "cpu_cores": psutil.cpu_count(),
    }
