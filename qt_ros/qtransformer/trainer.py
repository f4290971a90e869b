"""Offline Q-Transformer training on a converted dataset: ``TrainConfig`` and ``train(cfg)``.

One process on a CPU or a GPU, or many through ``torchrun`` (PyTorch DDP, gloo on CPU, nccl on
GPU) with the same call. Each rank draws its own i.i.d. batches from the dataset's weighted
sampler (sources and outcomes in the shares asked for), so DDP needs no sharded sampler;
gradients are averaged by DDP. Rank 0 writes the checkpoint (``model.safetensors`` +
``config.json``, loadable by the policy node), ``metrics.jsonl`` (one line per logged step) and
``training.png`` (loss curves) into ``cfg.out``. ``cfg.init`` continues from a checkpoint
(weights only; the optimizer state starts fresh). ``cfg.learner.algo`` chooses the objective:
the Q-Transformer or the behaviour-cloning baseline on the same network (``bc_episodes`` then
chooses its data); the checkpoint records which, with every switch that differs from the
paper's algorithm (``algorithm_summary``), so an evaluation table can label it.

``qt-ros train`` (:mod:`qt_ros.commands.train`) is this module's command line: its options are
generated from ``TrainConfig`` and ``LearnerConfig``, so a default exists only here. PyTorch is
imported inside ``train``, so importing this module (for ``--help``) stays light.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from qt_ros.common.settings import defaults, setting
from qt_ros.data.returns import DEFAULT_GAMMA
from qt_ros.qtransformer.instruction_encoder import KINDS, MINILM_DIM, EncoderConfig
from qt_ros.qtransformer.learner_config import LearnerConfig
from qt_ros.qtransformer.model_config import PRESETS, model_config

# Embedding size of a newly trained model's hash encoder (minilm's is fixed by the model).
HASH_ENCODER_DIM = 64
# Which episodes behaviour cloning imitates.
BC_EPISODES = ("successes", "all")


@dataclass
class TrainConfig:
    """Options of a training run; every field but ``learner`` is a ``qt-ros train`` option."""

    dataset: str = setting(help="dataset directory (qt-ros convert --out)")
    out: str = setting(help="checkpoint directory to write (created; an existing checkpoint "
                            "is overwritten)")
    preset: str = setting("small", "model size; image size, state size and bins always come "
                                   "from the dataset", choices=PRESETS)
    history: int | None = setting(None, "frames per observation (default: the preset's)")
    steps: int = setting(10000, "gradient steps")
    batch_size: int = setting(8, "transitions per step and per process")
    n_step: int = setting(1, "n of the n-step return (1: one-step TD; the paper's ablation "
                             "compares n > 1)")
    gamma: float = setting(DEFAULT_GAMMA, "discount")
    encoder: str = setting(EncoderConfig.kind, "instruction encoder (minilm: the pretrained "
                                               "all-MiniLM-L6-v2, offline)", choices=KINDS)
    demo_weight: float = setting(1.0, "sampling share of demonstration steps")
    autonomous_weight: float = setting(1.0, "sampling share of autonomous steps")
    bc_episodes: str = setting(
        "successes", "with --algo bc: train on the steps of successful episodes only "
                     "(filtered BC) or of all episodes (ignored by --algo qt, which learns from "
                     "failures too)", choices=BC_EPISODES)
    device: str = setting("auto", "auto (cuda when available) | cpu | cuda | cuda:N")
    workers: int = setting(2, "DataLoader worker processes")
    save_every: int = setting(1000, "steps between checkpoints")
    log_every: int = setting(50, "steps between metric lines")
    max_minutes: float = setting(0.0, "stop (and save) after this wall time (0: no limit)")
    init: str | None = setting(None, "checkpoint to continue from (same architecture)")
    seed: int = setting(0, "seeds model initialisation and sampling (offset by the rank)")
    # The update's hyper-parameters; a dict of LearnerConfig fields is accepted too.
    learner: LearnerConfig = field(default_factory=LearnerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.learner, dict):
            self.learner = LearnerConfig.from_config(self.learner)
        if self.bc_episodes not in BC_EPISODES:
            raise ValueError(f"bc_episodes must be one of {BC_EPISODES}, got {self.bc_episodes!r}")


# How an ablation shows in a label; the keys are the switches that change the algorithm
# (optimizer settings do not, nor do the data's sampling shares).
_SWITCH_LABELS = {
    "conservative_weight": lambda v: f"alpha {v:g}",
    "mc_lower_bound": lambda v: "no MC bound",
    "n_step": lambda v: f"n-step {v}",
    "gamma": lambda v: f"gamma {v:g}",
    "target_network": lambda v: "no target network",
    "tau": lambda v: f"tau {v:g}",
    "autoregressive_targets": lambda v: "no autoregressive targets",
    "bootstrap": lambda v: "no bootstrap",
}


def algorithm_summary(cfg: TrainConfig) -> dict:
    """What trains a checkpoint, for tables: ``{"algo", "label", "switches"}``.

    ``switches`` holds the algorithm's settings that differ from the paper's defaults, and
    ``label`` says it in words, e.g. "Q-T", "Q-T (alpha 0, n-step 3)", "BC (successes)".
    """
    if cfg.learner.algo == "bc":
        return {"algo": "bc", "label": f"BC ({cfg.bc_episodes})",
                "switches": {"bc_episodes": cfg.bc_episodes}}
    paper = {**defaults(TrainConfig), **defaults(LearnerConfig)}
    ours = {**cfg.__dict__, **cfg.learner.__dict__}
    switches = {k: ours[k] for k in _SWITCH_LABELS if ours[k] != paper[k]}
    if not cfg.learner.target_network:
        switches.pop("tau", None)                       # no target network, no Polyak rate
    words = [_SWITCH_LABELS[k](v) for k, v in switches.items()]
    return {"algo": "qt", "label": "Q-T" + (f" ({', '.join(words)})" if words else ""),
            "switches": switches}


def train(cfg: TrainConfig) -> Path:
    """Run training; returns the checkpoint directory. Works alone or under ``torchrun``."""
    import torch
    import torch.distributed as dist

    from qt_ros.qtransformer.checkpoint import save_checkpoint
    from qt_ros.qtransformer.learner import Learner

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = _device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        out = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        model, dataset, encoder_config = _model_and_dataset(cfg, device)
        learner = Learner(model, cfg.learner, distributed=world > 1,
                          dimension_names=dataset.tokenizer.names)
        loader = data_loader(cfg, dataset, device, rank)
        algorithm = algorithm_summary(cfg)
        extra = {"algorithm": algorithm,
                 "train": {k: v for k, v in cfg.__dict__.items() if k != "learner"},
                 "learner": learner.config.to_config(), "dataset_steps": len(dataset),
                 "world_size": world}

        def save(step: int) -> None:
            save_checkpoint(out, model, dataset.tokenizer, encoder_config, step, extra)

        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            n_params = sum(p.numel() for p in model.parameters())
            print(f"qt-ros train: {algorithm['label']} on {len(dataset)} steps in "
                  f"{len(dataset.episodes)} episodes, model {cfg.preset} "
                  f"({n_params / 1e6:.2f}M parameters) on {device} x{world}, writing {out}",
                  file=sys.stderr)
        start = time.monotonic()
        step = _loop(cfg, learner, loader, save, out / "metrics.jsonl", rank, world, device)
        if rank == 0:
            save(step)
            plot_metrics(out / "metrics.jsonl", out / "training.png")
            print(f"qt-ros train: {step} steps in {time.monotonic() - start:.0f} s; "
                  f"checkpoint {out}", file=sys.stderr)
        return out
    finally:
        if world > 1:
            dist.destroy_process_group()


def _model_and_dataset(cfg: TrainConfig, device):
    """(model on ``device``, dataset, encoder config): from ``cfg.init`` or a new preset model
    sized by the dataset."""
    from qt_ros.data.torch_dataset import QTransformerDataset
    from qt_ros.qtransformer.checkpoint import load_model
    from qt_ros.qtransformer.instruction_encoder import make_encoder
    from qt_ros.qtransformer.model import QTransformer

    model = None
    if cfg.init:
        model, _, encoder_config, _ = load_model(cfg.init, device)
    else:
        encoder_config = EncoderConfig(kind=cfg.encoder, dim=MINILM_DIM if cfg.encoder == "minilm"
                                       else HASH_ENCODER_DIM)
    encoder = make_encoder(encoder_config)
    history = cfg.history or (model.cfg.history if model is not None else
                              model_config(cfg.preset).history)
    dataset = QTransformerDataset(cfg.dataset, history=history, n_step=cfg.n_step,
                                  gamma=cfg.gamma, instruction_embeddings=encoder.encode_batch)
    if model is None:
        model = QTransformer(model_config(
            cfg.preset, image_size=dataset.image_size, history=history,
            state_dim=dataset.state_dim, action_bins=tuple(dataset.tokenizer.bins),
            instruction_dim=encoder_config.dim)).to(device)
    _check_compatible(model, dataset, cfg)
    return model, dataset, encoder_config


def data_loader(cfg: TrainConfig, dataset, device, rank: int = 0):
    """A DataLoader of ``cfg.steps`` batches drawn by the dataset's weighted sampler (sources in
    the shares asked for; filtered BC: successful episodes only); each rank draws its own
    (seeded by ``cfg.seed`` and the rank)."""
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(cfg.seed + 1000 * rank)
    sampler = dataset.sampler(cfg.steps * cfg.batch_size,
                              source={"demonstration": cfg.demo_weight,
                                      "autonomous": cfg.autonomous_weight},
                              outcome=_outcome_weights(cfg, dataset), generator=generator)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                      num_workers=cfg.workers, pin_memory=device.type == "cuda",
                      persistent_workers=cfg.workers > 0, drop_last=True)


def _outcome_weights(cfg: TrainConfig, dataset) -> dict[str, float] | None:
    """Sampling weight per episode outcome: filtered BC draws successful episodes only."""
    if cfg.learner.algo != "bc" or cfg.bc_episodes == "all":
        return None
    counts: dict[str, int] = {}
    for episode in dataset.episodes:
        outcome = episode.get("outcome", "unknown")
        counts[outcome] = counts.get(outcome, 0) + 1
    if not counts.get("success"):
        found = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
        raise ValueError(f"dataset {cfg.dataset} has no successful episode ({found}), and "
                         f"--algo bc --bc-episodes successes trains on successful episodes only: "
                         f"label the successes (/recorder/label_episode, or outcome/labels in the "
                         f"topic mapping) and convert into a new dataset, or pass --bc-episodes "
                         f"all to imitate every episode")
    return {outcome: float(outcome == "success") for outcome in counts}


def _loop(cfg: TrainConfig, learner, loader, save, log_path: Path, rank: int, world: int,
          device) -> int:
    """The gradient steps; rank 0 logs metrics and saves every ``save_every``. Returns the
    number of steps done (fewer than ``cfg.steps`` when ``max_minutes`` ran out)."""
    import torch
    import torch.distributed as dist
    from tqdm import tqdm

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
                bar.set_postfix(_progress(metrics))
            out_of_time = cfg.max_minutes > 0 and time.monotonic() - start > 60 * cfg.max_minutes
            if world > 1:  # every rank stops at the same step
                flag = torch.tensor([float(out_of_time)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                out_of_time = bool(flag.item())
            if rank == 0 and (step % cfg.save_every == 0 or out_of_time):
                save(step)
            if out_of_time:
                break
        bar.close()
    finally:
        if log is not None:
            log.close()
    return step


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


def _progress(metrics: dict[str, float]) -> dict[str, str]:
    """The progress bar's figures: loss and mean Q (Q-T) or batch accuracy (BC)."""
    second = ("acc", metrics["accuracy"]) if "accuracy" in metrics else ("q", metrics["q_taken"])
    return {"loss": f"{metrics['loss']:.4f}", second[0]: f"{second[1]:.3f}"}


def plot_metrics(metrics_jsonl: Path, png: Path) -> Path | None:
    """training.png from metrics.jsonl: the loss and its terms, and beside them the mean Q of
    the taken bins and its target (Q-T) or the teacher-forced accuracy per dimension (BC)."""
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bc = "cross_entropy" in rows[0]
    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in ("loss", "cross_entropy") if bc else ("loss", "td_loss", "conservative_loss"):
        values = [r[key] for r in rows]
        if any(v > 0 for v in values):             # e.g. --alpha 0: no conservative term
            ax_loss.plot(steps, values, label=key)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("loss")
    ax_loss.legend()
    if bc:
        for key in (k for k in rows[0] if k.startswith("accuracy_")):
            ax_right.plot(steps, [r[key] for r in rows], label=key[len("accuracy_"):], lw=1)
        ax_right.plot(steps, [r["accuracy"] for r in rows], "k", label="mean", lw=2)
        ax_right.set_ylim(-0.02, 1.02)
        ax_right.set_title("accuracy on the batch (teacher-forced)")
    else:
        for key in ("q_taken", "target"):
            ax_right.plot(steps, [r[key] for r in rows], label=key)
        ax_right.set_title("mean Q of taken bins and target")
    ax_right.set_xlabel("step")
    ax_right.legend(fontsize="small", ncol=3 if bc else 1)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
