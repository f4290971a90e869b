"""``qt-ros bench convert``: how fast bags of camera frames become training steps.

Writes ``--episodes`` synthetic episode bags (recorder format: 640x480 rgb8 frames at 30 Hz,
policy steps at 10 Hz, camera-like texture) and converts them to 128x128 steps with
``qt-ros convert``, once with one worker (the per-core rate) and once with ``--workers``. Prints
one JSON object: steps per second, steps per second per worker, peak memory of the converter's
process tree (resident set size, summed over its worker processes), bag and dataset sizes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from qt_ros.episodes.synthetic import write_episode

REPO = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50, help="control steps per episode")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--image-rate", type=float, default=30.0, help="Hz of the camera")
    parser.add_argument("--step-rate", type=float, default=10.0, help="Hz of the policy steps")
    parser.add_argument("--size", type=int, default=128, help="training resolution (square)")
    parser.add_argument("--workers", type=int, default=psutil.cpu_count() or 1)
    parser.add_argument("--compression", choices=("none", "zstd"), default="none",
                        help="chunk compression of the bags")
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed)")


def run(args: argparse.Namespace) -> int:
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="qt_ros_bench_convert_"))
    try:
        bags = work / "bags"
        t = time.perf_counter()
        for i in range(args.episodes):
            write_episode(bags, f"bench-{i:03d}", args.steps, image_size=(args.height, args.width),
                          image_rate=args.image_rate, step_rate=args.step_rate,
                          compression=args.compression, pattern="texture", seed=i)
        write_s = time.perf_counter() - t
        runs = {}
        for workers in sorted({1, args.workers}):
            runs[workers] = _convert(bags, work / f"dataset-{workers}", args.size, workers)
        steps = args.episodes * args.steps
        bag_bytes = sum(f.stat().st_size for f in bags.rglob("*") if f.is_file())
        result = {
            "benchmark": "convert",
            "bags": args.episodes,
            "steps": steps,
            "bag_images": f"{args.width}x{args.height} rgb8 at {args.image_rate:g} Hz, "
                          f"steps at {args.step_rate:g} Hz",
            "training_size": f"{args.size}x{args.size}",
            "compression": args.compression,
            "bag_mb": round(bag_bytes / 1e6, 1),
            "bag_write_s": round(write_s, 2),
            "runs": [{"workers": w, "seconds": round(r["seconds"], 2),
                      "wall_s_with_startup": round(r["wall"], 2),
                      "steps_per_s": round(steps / r["seconds"], 1),
                      "steps_per_s_per_worker": round(steps / r["seconds"] / w, 1),
                      "peak_rss_mb": round(r["peak_rss"] / 1e6, 1),
                      "exit_status": r["status"]} for w, r in runs.items()],
            "dataset_mb": round(runs[1]["dataset_bytes"] / 1e6, 1),
            "cpu_cores": psutil.cpu_count(),
        }
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0 if all(r["status"] == 0 for r in runs.values()) else 1


def _convert(bags: Path, out: Path, size: int, workers: int) -> dict:
    cmd = [sys.executable, "-m", "qt_ros.cli", "convert", str(bags), "--out", str(out),
           "--image-size", str(size), "--workers", str(workers), "--quiet"]
    peak = 0
    done = threading.Event()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                rss = 0
                for p in [root, *root.children(recursive=True)]:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, rss)
                time.sleep(0.02)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    # the converter's own timing (bags opened to dataset committed), without interpreter start-up
    match = re.search(r" in ([0-9.]+) s;", stdout.decode(errors="replace"))
    seconds = float(match.group(1)) if match else wall
    done.set()
    sampler.join()
    if proc.returncode:
        print(stderr.decode(errors="replace")[-2000:], file=sys.stderr)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"seconds": seconds, "wall": wall, "peak_rss": peak, "status": proc.returncode,
            "dataset_bytes": size}
