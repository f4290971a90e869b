"""``qt-ros bench act``: latency of one control step of the Q-Transformer policy.

A randomly initialised model of the chosen size acts on a stream of random camera frames, as the
policy node calls it: each step encodes only the newest frame (the earlier ones are cached),
runs the trunk over the w-frame history and decodes the d action dimensions greedily with the
KV cache. Prints one JSON object: parameter count, configuration, the per-step latency
percentiles in milliseconds after warm-up (``step_ms``, wall clock), the process CPU time per
step (``step_cpu_ms``: with ``--threads 1`` the step's own compute, which other load on the
machine barely changes), the first step of an episode and the very first call (``cold_start_ms``,
which builds oneDNN's kernels), and the machine's CPU pressure before and after (Linux PSI: the
share of time runnable tasks waited for a CPU; high values mean the figures are inflated).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from qt_ros.qtransformer.instruction_encoder import EncoderConfig, make_encoder
from qt_ros.qtransformer.model import QTransformer, count_parameters
from qt_ros.qtransformer.model_config import PRESETS, model_config
from qt_ros.qtransformer.policy import Policy
from qt_ros.qtransformer.tokenizer import ActionTokenizer


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the act and train benchmarks: model size and input."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small",
                        help="model size (tiny, small ~10M parameters, base ~paper)")
    parser.add_argument("--frames", type=int, default=6, help="history w")
    parser.add_argument("--image-size", type=int, default=64, help="model input (square)")
    parser.add_argument("--dims", type=int, default=8, help="action dimensions")
    parser.add_argument("--bins", type=int, default=256, help="bins per dimension")
    parser.add_argument("--d-model", type=int, help="override the preset's transformer width")
    parser.add_argument("--layers", type=int, help="override the trunk layers")
    parser.add_argument("--frame-layers", type=int, help="override the per-frame layers")
    parser.add_argument("--head-layers", type=int, help="override the head layers")
    parser.add_argument("--tokens", type=int, help="override TokenLearner tokens per frame")
    parser.add_argument("--stem-stride", type=int,
                        help="override the image stem's stride (2, 4 or 8)")
    parser.add_argument("--state-dim", type=int, default=0, help="proprioceptive state size")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)


def build_model(args: argparse.Namespace) -> tuple[QTransformer, ActionTokenizer]:
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [f"a{i}" for i in range(args.dims)]
    tokenizer = ActionTokenizer.uniform(names, [-1.0] * args.dims, [1.0] * args.dims, args.bins)
    cfg = model_config(args.preset, history=args.frames,
                       image_size=(args.image_size, args.image_size),
                       action_bins=tuple(tokenizer.bins), d_model=args.d_model,
                       num_layers=args.layers, frame_layers=args.frame_layers,
                       head_layers=args.head_layers, tokens_per_frame=args.tokens,
                       stem_stride=args.stem_stride, state_dim=args.state_dim)
    torch.manual_seed(args.seed)
    return QTransformer(cfg).to(args.device), tokenizer


def describe(model: QTransformer, args: argparse.Namespace) -> dict:
    cfg = model.cfg
    return {
        "preset": args.preset,
        "parameters": count_parameters(model),
        "parameters_millions": round(count_parameters(model) / 1e6, 2),
        "frames": cfg.history,
        "image_size": list(cfg.image_size),
        "action_dims": cfg.num_dims,
        "bins": cfg.max_bins,
        "d_model": cfg.d_model,
        "layers": {"frame": cfg.frame_layers, "trunk": cfg.num_layers, "head": cfg.head_layers},
        "tokens_per_frame": cfg.tokens_per_frame,
        "stem_stride": cfg.stem_stride,
        "state_dim": cfg.state_dim,
        "device": str(args.device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": psutil.cpu_count(),
        "torch": torch.__version__,
    }


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which runnable tasks waited for a CPU (Linux PSI), in %: how
    busy the machine was with other work. None where the kernel does not report it."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50": round(float(np.percentile(ms, 50)), 3),
            "p10": round(float(np.percentile(ms, 10)), 3),
            "p90": round(float(np.percentile(ms, 90)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3),
            "mean": round(float(ms.mean()), 3), "max": round(float(ms.max()), 3)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=300, help="timed control steps")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--camera", default=None,
                        help="HxW of the incoming frames, resized inside (default: image size)")
    parser.add_argument("--runtime", choices=("torch", "onnx", "torchscript", "both"),
                        default="torch",
                        help="what acts: the PyTorch policy, its qt-ros export run by ONNX "
                             "Runtime or TorchScript (CPU), or both torch and onnx, compared")


def run(args: argparse.Namespace) -> int:
    model, tokenizer = build_model(args)
    encoder_config = EncoderConfig(kind="hash", dim=model.cfg.instruction_dim)
    h, w = ((int(v) for v in args.camera.lower().split("x")) if args.camera
            else (args.image_size, args.image_size))
    rng = np.random.default_rng(args.seed)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(16)]
    state = np.zeros(args.state_dim, dtype=np.float32) if args.state_dim else None
    runtimes = ["torch", "onnx"] if args.runtime == "both" else [args.runtime]
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in runtimes:
            if runtime == "torch":
                policy = Policy(model, tokenizer, make_encoder(encoder_config))
            else:
                policy = _exported(model, tokenizer, encoder_config, Path(tmp), runtime,
                                   args.threads or 1)
            timings[runtime] = _time_policy(policy, frames, state, args)
    result = {"benchmark": "act", **describe(model, args), "camera": f"{h}x{w}",
              "steps": args.steps, **timings[runtimes[0]],
              "note": "per control step: newest frame encoded, history cached, greedy decoding"}
    if len(runtimes) > 1:
        result["runtimes"] = timings
        result["onnx_vs_torch_p50"] = round(timings["onnx"]["step_ms"]["p50"]
                                            / timings["torch"]["step_ms"]["p50"], 3)
        result["onnx_vs_torch_p99"] = round(timings["onnx"]["step_ms"]["p99"]
                                            / timings["torch"]["step_ms"]["p99"], 3)
    result["runtime"] = args.runtime
    print(json.dumps(result))
    return 0


def _exported(model, tokenizer, encoder_config, tmp: Path, runtime: str, threads: int):
    """The model saved as a checkpoint, exported by ``qt-ros export``'s code, loaded back."""
    from qt_ros.qtransformer.checkpoint import save_checkpoint
    from qt_ros.qtransformer.exported_policy import ExportedPolicy
    from qt_ros.qtransformer.policy_export import export_checkpoint

    save_checkpoint(tmp / "ckpt", model, tokenizer, encoder_config)
    fmt = "onnx" if runtime == "onnx" else "torchscript"
    return ExportedPolicy(export_checkpoint(tmp / "ckpt", tmp / fmt, fmt), threads=threads)


def _time_policy(policy, frames: list[np.ndarray], state, args: argparse.Namespace) -> dict:
    synchronize = (torch.cuda.synchronize if str(args.device).startswith("cuda")
                   else lambda: None)
    instruction = "pick up the red block and put it in the bowl"
    policy.reset(instruction)
    t = time.perf_counter()
    policy.act(frames[0], state)          # builds oneDNN's kernels for these shapes
    synchronize()
    cold = time.perf_counter() - t
    for i in range(args.warmup):
        policy.act(frames[i % len(frames)], state)
    first = []
    for i in range(5):                   # episode starts: the history is the first frame
        policy.reset(instruction)
        t = time.perf_counter()
        policy.act(frames[i], state)
        synchronize()
        first.append(time.perf_counter() - t)
    times, cpu_times = [], []
    pressure = [cpu_pressure()]
    for i in range(args.steps):
        t, c = time.perf_counter(), time.process_time()
        policy.act(frames[i % len(frames)], state)
        synchronize()
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    pressure.append(cpu_pressure())
    return {"step_ms": percentiles(times), "step_cpu_ms": percentiles(cpu_times),
            "episode_first_step_ms": round(float(np.median(first)) * 1e3, 3),
            "cold_start_ms": round(cold * 1e3, 1), "cpu_pressure_pct": pressure}
