"""``qt-ros bench train``: speed of the offline Q-Transformer update.

One learner update = target-network pass over the current and next observations (eval mode, no
gradient), online forward and backward, gradient clipping, fused AdamW and the Polyak update.
The batch (random frames of the chosen size) is built once and reused, so data loading is not
timed. Prints one JSON object: parameter count, configuration, samples/s and seconds per step
(median, wall clock), the process CPU time per step and the machine's CPU pressure (see
``qt-ros bench act``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from qt_ros.commands.bench_act import (
    add_model_arguments,
    build_model,
    cpu_pressure,
    describe,
    percentiles,
)
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
    model, _ = build_model(args)
    learner = Learner(model, LearnerConfig())
    batch = {k: v.to(args.device) for k, v in random_batch(model, args.batch_size,
                                                            args.seed).items()}
    synchronize = (torch.cuda.synchronize if str(args.device).startswith("cuda")
                   else lambda: None)
    for _ in range(args.warmup):
        learner.update(batch)
    synchronize()
    times, cpu_times = [], []
    pressure = [cpu_pressure()]
    for _ in range(args.steps):
        t, c = time.perf_counter(), time.process_time()
        learner.update(batch)
        synchronize()
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    pressure.append(cpu_pressure())
    step_s = float(np.median(times))
    result = {"benchmark": "train", **describe(model, args), "batch_size": args.batch_size,
              "steps": args.steps,
              "samples_per_s": round(args.batch_size / step_s, 2),
              "s_per_step": round(step_s, 4),
              "step_ms": percentiles(times),
              "step_cpu_ms": percentiles(cpu_times),
              "cpu_pressure_pct": pressure,
              "note": "median over timed updates; data loading not included"}
    print(json.dumps(result))
    return 0
