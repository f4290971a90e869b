"""``qt-ros bench train``: speed of the offline Q-Transformer update.

One learner update = target-network pass over the current and next observations (eval mode, no
gradient), online forward and backward, gradient clipping, fused AdamW and the Polyak update.
The batch (random frames of the chosen size) is built once and reused, so data loading is not
timed. Prints one JSON object: parameter count, configuration, samples/s and seconds per step
(median, wall clock), the process CPU time per step and the machine's CPU pressure (see
``qt-ros bench act``).

``--end-to-end`` also trains from a real converted dataset (``--dataset DIR``, or synthetic
bags converted by ``qt-ros convert`` into a temporary directory) through ``qt-ros train``'s
data loader (``--workers``), and reports its samples/s (wall time over the timed steps, data
waits included) against the reused batch's, measured the same way, in the same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qt_ros.commands.bench_act import (
    add_model_arguments,
    build_model,
    cpu_pressure,
    describe,
    percentiles,
)
from qt_ros.common.allocator import retain_freed_memory
from qt_ros.data.returns import DEFAULT_GAMMA
from qt_ros.qtransformer.learner import Learner, LearnerConfig
from qt_ros.qtransformer.trainer import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                        help="transitions per update (default: qt-ros train's, "
                             f"{TrainConfig.batch_size})")
    parser.add_argument("--steps", type=int, default=20, help="timed updates")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--end-to-end", action="store_true",
                        help="also time training from a converted dataset, data loading "
                             "included")
    parser.add_argument("--dataset", help="with --end-to-end: a converted dataset of the "
                                          "model's image size (default: synthetic bags, "
                                          "converted)")
    parser.add_argument("--workers", type=int, default=TrainConfig.workers,
                        help="with --end-to-end: DataLoader workers (default: qt-ros train's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--image-shift", type=int, default=LearnerConfig.image_shift,
                        help="random-shift augmentation of the frames, pixels (qt-ros train "
                             f"--image-shift; default: {LearnerConfig.image_shift}, off)")
    parser.add_argument("--allocator", choices=("retain", "default"), default="retain",
                        help="retain: keep freed memory for reuse, as qt-ros train does "
                             "(qt_ros.common.allocator); default: glibc's settings")


def random_batch(model, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, cfg.history, 3, *cfg.image_size)
    return {
        "frames": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g),
        "next_frames": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g),
        "instruction_embedding": torch.randn(batch_size, cfg.instruction_dim, generator=g),
        "state": torch.randn(batch_size, cfg.state_dim, generator=g),
        "next_state": torch.randn(batch_size, cfg.state_dim, generator=g),
        "action_bins": torch.stack([torch.randint(0, n, (batch_size,), generator=g)
                                    for n in cfg.action_bins], 1),
        "reward": (torch.rand(batch_size, generator=g) < 0.1).float(),
        "done": (torch.rand(batch_size, generator=g) < 0.1).float(),
        "discount": torch.full((batch_size,), DEFAULT_GAMMA),  # one-step TD
        "mc_return": torch.rand(batch_size, generator=g),
    }


def run(args: argparse.Namespace) -> int:
    retained = args.allocator == "retain" and retain_freed_memory()
    model, _ = build_model(args)
    learner = Learner(model, LearnerConfig(image_shift=args.image_shift))
    if args.compile:
        model.compile()
        if learner.target is not None:
            learner.target.compile()
    batch = {k: v.to(args.device) for k, v in random_batch(model, args.batch_size,
                                                            args.seed).items()}
    synchronize = (torch.cuda.synchronize if str(args.device).startswith("cuda")
                   else lambda: None)
    start = time.perf_counter()
    for _ in range(args.warmup):
        learner.update(batch)
    synchronize()
    warmup_s = time.perf_counter() - start
    times, cpu_times = [], []
    pressure = [cpu_pressure()]
    start = time.perf_counter()
    for _ in range(args.steps):
        t, c = time.perf_counter(), time.process_time()
        learner.update(batch)
        synchronize()
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    synthetic_s = time.perf_counter() - start
    pressure.append(cpu_pressure())
    step_s = float(np.median(times))
    result = {"benchmark": "train", **describe(model, args), "batch_size": args.batch_size,
              "steps": args.steps, "compile": args.compile, "allocator_retains": retained,
              "image_shift": args.image_shift,
              "samples_per_s": round(args.batch_size / step_s, 2),
              "s_per_step": round(step_s, 4),
              "step_ms": percentiles(times),
              "step_cpu_ms": percentiles(cpu_times),
              "warmup_s": round(warmup_s, 2),
              "cpu_pressure_pct": pressure,
              "note": "median over timed updates; data loading not included"}
    if args.end_to_end:
        synthetic = args.batch_size * args.steps / synthetic_s
        e2e = _end_to_end(args, learner, model, synchronize)
        result["end_to_end"] = {**e2e, "synthetic_batch_samples_per_s": round(synthetic, 2),
                                "ratio": round(e2e["samples_per_s"] / synthetic, 3)}
        pressure.append(cpu_pressure())
    print(json.dumps(result))
    return 0


def _end_to_end(args: argparse.Namespace, learner, model, synchronize) -> dict:
    """Updates fed by ``qt-ros train``'s data loader from a converted dataset: samples/s over
    the timed steps (wall time, data waits included) and the mean wait per step."""
    from qt_ros.data.torch_dataset import QTransformerDataset
    from qt_ros.qtransformer.instruction_encoder import EncoderConfig, make_encoder
    from qt_ros.qtransformer.trainer import data_loader

    with tempfile.TemporaryDirectory() as tmp:
        root = args.dataset or _converted_dataset(Path(tmp), model.cfg.image_size[0])
        encoder = make_encoder(EncoderConfig(kind="hash", dim=model.cfg.instruction_dim))
        dataset = QTransformerDataset(root, history=model.cfg.history,
                                      instruction_embeddings=encoder.encode_batch)
        if (dataset.tokenizer.num_dims != model.cfg.num_dims
                or max(dataset.tokenizer.bins) > model.cfg.max_bins
                or tuple(dataset.image_size) != tuple(model.cfg.image_size)):
            raise SystemExit(f"qt-ros bench train: the dataset ({dataset.tokenizer.num_dims} "
                             f"dimensions of up to {max(dataset.tokenizer.bins)} bins, images "
                             f"{tuple(dataset.image_size)}) does not fit the model: pass "
                             f"--dims, --bins and --image-size to match")
        cfg = TrainConfig(dataset=str(root), out=tmp, batch_size=args.batch_size,
                          steps=args.warmup + args.steps, workers=args.workers, seed=args.seed)
        batches = iter(data_loader(cfg, dataset, torch.device(args.device)))
        for _ in range(args.warmup):
            learner.update(next(batches))
        synchronize()
        waits = []
        start = time.perf_counter()
        for _ in range(args.steps):
            t = time.perf_counter()
            batch = next(batches)
            waits.append(time.perf_counter() - t)
            learner.update(batch)
            synchronize()
        seconds = time.perf_counter() - start
        del batches
    return {"samples_per_s": round(args.batch_size * args.steps / seconds, 2),
            "data_wait_ms": percentiles(waits), "workers": args.workers,
            "dataset": args.dataset or f"synthetic bags converted by qt-ros convert "
                                       f"({len(dataset)} steps)"}


def _converted_dataset(tmp: Path, image_size: int) -> Path:
    """Synthetic episode bags converted by ``qt-ros convert`` at the model's image size."""
    from qt_ros.cli import main as qt_ros_main
    from qt_ros.episodes.synthetic import write_episode

    for i in range(6):
        write_episode(tmp / "bags", f"ep{i}", 40, outcome="success" if i % 2 else "failure",
                      pattern="texture", seed=i, image_size=(240, 320))
    if qt_ros_main(["convert", str(tmp / "bags"), "--out", str(tmp / "data"), "--image-size",
                    str(image_size), "--quiet"]) != 0:
        raise RuntimeError("qt-ros convert failed on the synthetic bags")
    return tmp / "data"
