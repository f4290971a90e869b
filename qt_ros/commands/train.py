"""``qt-ros train DATASET --out CHECKPOINT``: offline Q-Transformer training on a converted dataset.

One process on a CPU or a GPU, or many through ``torchrun`` (PyTorch DDP, gloo on CPU, nccl on
GPU) with the same command::

    qt-ros train data/ --out ckpt/ --steps 20000
    torchrun --nproc-per-node 4 -m qt_ros.cli train data/ --out ckpt/ --steps 20000

Each rank draws its own i.i.d. batches from the dataset's weighted sampler (sources and outcomes
in the shares asked for), so DDP needs no sharded sampler; gradients are averaged by DDP.
Rank 0 writes the checkpoint (``model.safetensors`` + ``config.json``, loadable by the policy
node), ``metrics.jsonl`` (one line per logged step) and ``training.png`` (loss curves) into
``--out``. ``--init`` continues from a checkpoint (weights only; optimizer state starts fresh).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from qt_ros.data.dataset_store import DatasetError


@dataclass
class TrainConfig:
    """Options of a training run (every field is a command-line option).

    Attributes:
        dataset: dataset directory written by ``qt-ros convert``.
        out: checkpoint directory to write (created; an existing checkpoint is overwritten).
        preset: model size, ``tiny`` | ``small`` | ``base`` (image size, state size and bins
            always come from the dataset).
        history: frames w per observation (default: the preset's).
        steps: gradient steps.
        batch_size: transitions per step and per process.
        n_step: n of the n-step return; gamma: discount.
        encoder: instruction encoder, ``minilm`` (pretrained, offline) or ``hash``.
        demo_weight / autonomous_weight: sampling shares of demonstration and autonomous steps.
        device: ``auto`` (cuda when available), ``cpu`` or ``cuda``.
        workers: DataLoader worker processes.
        save_every / log_every: steps between checkpoints / metric lines.
        max_minutes: stop (and save) after this wall time, 0 = no limit.
        init: checkpoint to start from (same architecture), or None.
        seed: seeds model initialisation and sampling (offset by the rank).
        learner: LearnerConfig fields (lr, tau, conservative_weight, ablation switches).
    """

    dataset: str
    out: str
    preset: str = "small"
    history: int | None = None
    steps: int = 10000
    batch_size: int = 8
    n_step: int = 1
    gamma: float = 0.98
    encoder: str = "minilm"
    demo_weight: float = 1.0
    autonomous_weight: float = 1.0
    device: str = "auto"
    workers: int = 2
    save_every: int = 1000
    log_every: int = 50
    max_minutes: float = 0.0
    init: str | None = None
    seed: int = 0
    learner: dict = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset directory (qt-ros convert --out)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "base"],
                        help="model size (default: small, ~10M parameters)")
    parser.add_argument("--history", type=int, help="frames per observation (default: preset's)")
    parser.add_argument("--steps", type=int, default=10000, help="gradient steps")
    parser.add_argument("--batch-size", type=int, default=8, help="per process")
    parser.add_argument("--n-step", type=int, default=1, help="n of the n-step return")
    parser.add_argument("--gamma", type=float, default=0.98, help="discount")
    parser.add_argument("--encoder", default="minilm", choices=["minilm", "hash"],
                        help="instruction encoder (minilm: pretrained all-MiniLM-L6-v2, offline)")
    parser.add_argument("--demo-weight", type=float, default=1.0,
                        help="sampling share of demonstration steps")
    parser.add_argument("--autonomous-weight", type=float, default=1.0,
                        help="sampling share of autonomous steps")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints")
    parser.add_argument("--log-every", type=int, default=50, help="steps between metric lines")
    parser.add_argument("--max-minutes", type=float, default=0.0,
                        help="stop and save after this wall time (0: no limit)")
    parser.add_argument("--init", help="checkpoint to continue from")
    parser.add_argument("--seed", type=int, default=0)
    learner = parser.add_argument_group("learner (defaults: the paper's algorithm)")
    learner.add_argument("--lr", type=float, default=1e-4)
    learner.add_argument("--tau", type=float, default=0.005, help="Polyak rate of the target")
    learner.add_argument("--alpha", type=float, default=1.0,
                         help="weight of the conservative regularizer (0: off)")
    for flag, help_ in [("no-target-network", "bootstrap from the online network"),
                        ("no-autoregressive-targets", "every dimension gets the last one's target"),
                        ("no-bootstrap", "last-dimension target is the n-step reward alone"),
                        ("no-mc-lower-bound", "do not clip targets below by the MC return")]:
        learner.add_argument(f"--{flag}", action="store_true", help=help_)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    learner = {"lr": args.lr, "tau": args.tau, "conservative_weight": args.alpha,
               "target_network": not args.no_target_network,
               "autoregressive_targets": not args.no_autoregressive_targets,
               "bootstrap": not args.no_bootstrap, "mc_lower_bound": not args.no_mc_lower_bound}
    return TrainConfig(
        dataset=args.dataset, out=args.out, preset=args.preset, history=args.history,
        steps=args.steps, batch_size=args.batch_size, n_step=args.n_step, gamma=args.gamma,
        encoder=args.encoder, demo_weight=args.demo_weight,
        autonomous_weight=args.autonomous_weight, device=args.device, workers=args.workers,
        save_every=args.save_every, log_every=args.log_every, max_minutes=args.max_minutes,
        init=args.init, seed=args.seed, learner=learner)


def run(args: argparse.Namespace) -> int:
    try:
        train(config_from_args(args))
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        print(f"qt-ros train: {exc}", file=sys.stderr)
        return 2
    return 0


def train(cfg: TrainConfig) -> Path:
    """Run training; returns the checkpoint directory. Works alone or under ``torchrun``."""
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from qt_ros.data.torch_dataset import QTransformerDataset
    from qt_ros.qtransformer.checkpoint import load_model, save_checkpoint
    from qt_ros.qtransformer.instruction_encoder import MINILM_DIM, EncoderConfig, make_encoder
    from qt_ros.qtransformer.learner import Learner, LearnerConfig
    from qt_ros.qtransformer.model import QTransformer, model_config

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = _device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        out = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        if cfg.init:
            model, _, encoder_config, _ = load_model(cfg.init, device)
        else:
            encoder_config = EncoderConfig(kind=cfg.encoder,
                                           dim=MINILM_DIM if cfg.encoder == "minilm" else 64)
        encoder = make_encoder(encoder_config)
        history = cfg.history or (model.cfg.history if cfg.init else
                                  model_config(cfg.preset).history)
        dataset = QTransformerDataset(cfg.dataset, history=history, n_step=cfg.n_step,
                                      gamma=cfg.gamma,
                                      instruction_embeddings=encoder.encode_batch)
        if not cfg.init:
            model = QTransformer(model_config(
                cfg.preset, image_size=dataset.image_size, history=history,
                state_dim=dataset.state_dim, action_bins=tuple(dataset.tokenizer.bins),
                instruction_dim=encoder_config.dim)).to(device)
        _check_compatible(model, dataset, cfg)
        learner = Learner(model, LearnerConfig.from_config(cfg.learner), distributed=world > 1)
        generator = torch.Generator().manual_seed(cfg.seed + 1000 * rank)
        sampler = dataset.sampler(cfg.steps * cfg.batch_size,
                                  source={"demonstration": cfg.demo_weight,
                                          "autonomous": cfg.autonomous_weight},
                                  generator=generator)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                            num_workers=cfg.workers, pin_memory=device.type == "cuda",
                            persistent_workers=cfg.workers > 0, drop_last=True)
        extra = {"train": {k: v for k, v in cfg.__dict__.items() if k != "learner"},
                 "learner": learner.config.to_config(), "dataset_steps": len(dataset),
                 "world_size": world}
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            n_params = sum(p.numel() for p in model.parameters())
            print(f"qt-ros train: {len(dataset)} steps in {len(dataset.episodes)} episodes, "
                  f"model {cfg.preset} ({n_params / 1e6:.2f}M parameters) on {device} "
                  f"x{world}, writing {out}", file=sys.stderr)
        log_path = out / "metrics.jsonl"
        log = open(log_path, "w") if rank == 0 else None  # noqa: SIM115 - closed below
        start = time.monotonic()
        step = 0
        try:
            bar = tqdm(total=cfg.steps, desc="train", unit="step", disable=rank != 0,
                       file=sys.stderr, dynamic_ncols=True)
            for batch in loader:
                metrics = learner.update(batch)
                step += 1
                bar.update(1)
                if not math.isfinite(metrics["loss"]):
                    raise FloatingPointError(f"loss is {metrics['loss']} at step {step}; "
                                             f"lower --lr or check the dataset")
                if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
                    line = {"step": step, "time": round(time.monotonic() - start, 3), **metrics}
                    log.write(json.dumps(line) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", q=f"{metrics['q_taken']:.3f}")
                out_of_time = cfg.max_minutes > 0 and \
                    time.monotonic() - start > 60 * cfg.max_minutes
                if world > 1:  # every rank stops at the same step
                    flag = torch.tensor([float(out_of_time)], device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    out_of_time = bool(flag.item())
                if rank == 0 and (step % cfg.save_every == 0 or out_of_time):
                    save_checkpoint(out, model, dataset.tokenizer, encoder_config, step, extra)
                if out_of_time:
                    break
            bar.close()
        finally:
            if log is not None:
                log.close()
        if rank == 0:
            save_checkpoint(out, model, dataset.tokenizer, encoder_config, step, extra)
            plot_metrics(log_path, out / "training.png")
            print(f"qt-ros train: {step} steps in {time.monotonic() - start:.0f} s; "
                  f"checkpoint {out}", file=sys.stderr)
        return out
    finally:
        if world > 1:
            dist.destroy_process_group()


def _device(name: str, local_rank: int):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but this PyTorch has no CUDA device")
    return torch.device(name)


def _check_compatible(model, dataset, cfg: TrainConfig) -> None:
    mc = model.cfg
    problems = []
    if tuple(mc.image_size) != tuple(dataset.image_size):
        problems.append(f"image size {tuple(mc.image_size)} vs the dataset's "
                        f"{tuple(dataset.image_size)}")
    if mc.state_dim != dataset.state_dim:
        problems.append(f"state size {mc.state_dim} vs the dataset's {dataset.state_dim}")
    if tuple(mc.action_bins) != tuple(dataset.tokenizer.bins):
        problems.append(f"action bins {list(mc.action_bins)} vs the dataset's "
                        f"{dataset.tokenizer.bins}")
    if mc.history != dataset.history:
        problems.append(f"history {mc.history} vs --history {dataset.history}")
    if problems:
        where = f"checkpoint {cfg.init}" if cfg.init else "the model"
        raise ValueError(f"{where} does not fit dataset {cfg.dataset}: " + "; ".join(problems))


def plot_metrics(metrics_jsonl: Path, png: Path) -> Path | None:
    """Loss, TD and conservative terms and mean Q/target per step, from metrics.jsonl."""
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_q) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in ("loss", "td_loss", "conservative_loss"):
        ax_loss.plot(steps, [r[key] for r in rows], label=key)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("loss")
    ax_loss.legend()
    for key in ("q_taken", "target"):
        ax_q.plot(steps, [r[key] for r in rows], label=key)
    ax_q.set_xlabel("step")
    ax_q.set_title("mean Q of taken bins and target")
    ax_q.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
