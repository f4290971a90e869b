"""Offline Q-Transformer training on converted datasets: ``train(cfg)``, from a few hundred
episodes on a workstation to many GPUs.

One process on a CPU or a GPU, or many through ``torchrun`` (PyTorch DDP, gloo on CPU, nccl on
GPU; ``--nnodes`` too) with the same call. Batch ``s`` is a function of the step (see
:mod:`qt_ros.data.dataset_mixture`): each rank draws its own slice of the step's global batch
from every dataset, in the shares asked for (datasets, sources, outcomes), without
communication; DDP averages the gradients, so N processes of batch B train like one process of
batch N x B. On a GPU the update runs under bf16 autocast where supported (never on a CPU).

Rank 0 writes into ``cfg.out``: the checkpoint (``model.safetensors`` + ``config.json``,
loadable by the policy node and ``qt-ros eval``), ``last/`` (the same checkpoint plus the whole
training state, :mod:`qt_ros.qtransformer.training_state`) every ``save_every`` steps and at
the end, ``best/`` by an offline metric every ``eval_every`` steps when asked, a copy of the
weights in ``steps/<step>/`` every ``keep_every`` steps when asked (to choose among in closed
loop afterwards: :mod:`qt_ros.evaluation.checkpoint_selection`),
``train_config.yaml`` (the resolved options), ``metrics.jsonl``, TensorBoard scalars and
``training.png`` (:mod:`qt_ros.qtransformer.train_monitor`). ``train(cfg, resume=True)``
continues from ``cfg.out/last`` exactly: same weights and metrics as a run never interrupted.
SIGTERM (a cluster's preemption), a first Ctrl-C and ``max_minutes`` stop after the current
step and save.

The Q range of a new model follows the data's returns (or ``q_min``/``q_max``); a return
outside the range of the model trained is an error before the first step.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

from qt_ros.qtransformer.instruction_encoder import MINILM_DIM, EncoderConfig
from qt_ros.qtransformer.model_config import model_config
from qt_ros.qtransformer.train_config import (  # noqa: F401 - the trainer's public names
    BC_EPISODES,
    BEST_METRICS,
    CONFIG_FILE,
    TrainConfig,
    algorithm_summary,
    write_config_file,
)
from qt_ros.qtransformer.train_monitor import METRICS, plot_metrics  # noqa: F401

# Embedding size of a newly trained model's hash encoder (minilm's is fixed by the model).
HASH_ENCODER_DIM = 64
LAST, BEST, KEPT = "last", "best", "steps"


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Run training; returns the run directory (a checkpoint). Works alone or under torchrun.
    ``resume``: continue the run in ``cfg.out`` from its ``last/`` state."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = _device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        run = _train(cfg, resume, rank, world, device)
        if world > 1:
            # Free the DDP wrapper (its reducer holds work of the process group) while the group
            # lives, and leave together: a rank that tore its group down while rank 0 still wrote
            # the checkpoint was once aborted by gloo ("terminate called without an active
            # exception", 1 run of the two-process test in ~5).
            gc.collect()
            dist.barrier()
        return run
    finally:
        if world > 1:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, resume: bool, rank: int, world: int, device) -> Path:
    import torch

    from qt_ros.qtransformer.learner import Learner
    from qt_ros.qtransformer.train_monitor import TrainMonitor
    from qt_ros.qtransformer.training_state import (
        load_training_state,
        restore_learner,
        restore_rng,
    )

    out = Path(cfg.out)
    state = load_training_state(out / LAST) if resume else None
    autocast = _autocast(cfg, device)
    torch.manual_seed(cfg.seed)
    model, data, encoder_config = _model_and_data(cfg, device, state)
    learner = Learner(model, cfg.learner, distributed=world > 1,
                      dimension_names=data.tokenizer.names)
    start = 0
    if state is not None:
        restore_learner(learner, state)
        restore_rng(state, rank, device)
        start = state.step
    if cfg.compile:
        _compile(learner)
    algorithm = algorithm_summary(cfg)
    extra = {"algorithm": algorithm, "train": {k: v for k, v in cfg.to_dict().items()
                                               if k != "learner"},
             "learner": learner.config.to_config(), "dataset_steps": len(data),
             "world_size": world}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_config_file(cfg, out / CONFIG_FILE)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"qt-ros train: {algorithm['label']} on {len(data)} steps in "
              f"{len(data.episodes)} episodes of {len(cfg.dataset)} dataset(s), model "
              f"{cfg.preset} ({n_params / 1e6:.2f}M parameters, Q in [{model.cfg.q_min:g}, "
              f"{model.cfg.q_max:g}]) on {device} x{world}"
              f"{', bf16 autocast' if autocast is not contextlib.nullcontext else ''}, "
              f"{'resuming at step ' + str(start) + ' in' if state else 'writing'} {out}",
              file=sys.stderr)
    monitor = TrainMonitor(cfg, out, start, rank, world, device, resume=state is not None,
                           elapsed=state.meta["monitor"].get("elapsed_s", 0.0) if state else 0.0)
    saver = _Saver(cfg, learner, data, encoder_config, extra, monitor, rank, world, device,
                   best=state.meta["monitor"].get("best") if state else None)
    loader = data_loader(cfg, data, device, rank, world, start=start)
    begun = time.monotonic()
    try:
        step = _loop(cfg, learner, loader, saver, monitor, start, world, device, autocast)
    finally:
        monitor.close()
    if rank == 0:
        plot_metrics(out / METRICS, out / "training.png")
        ended = "" if step >= cfg.steps else f" (stopped early: continue with --resume {out})"
        print(f"qt-ros train: step {step} of {cfg.steps} after {time.monotonic() - begun:.0f} s"
              f"{ended}; checkpoint {out}", file=sys.stderr)
    return out


def _model_and_data(cfg: TrainConfig, device, state):
    """(model on ``device``, dataset mixture, encoder config): from a resumed state, from
    ``cfg.init``, or a new preset model sized by the data with the data's Q range."""
    from qt_ros.data.dataset_mixture import DatasetMixture
    from qt_ros.qtransformer.checkpoint import load_model
    from qt_ros.qtransformer.instruction_encoder import make_encoder
    from qt_ros.qtransformer.model import QTransformer
    from qt_ros.qtransformer.model_config import ModelConfig
    from qt_ros.qtransformer.training_state import model_weights

    model = None
    if state is not None:
        model = QTransformer(ModelConfig.from_config(state.config["model"])).to(device)
        model.load_state_dict(model_weights(state, device), strict=True)
        encoder_config = EncoderConfig.from_config(state.config["encoder"])
    elif cfg.init:
        model, _, encoder_config, _ = load_model(cfg.init, device)
    else:
        encoder_config = EncoderConfig(kind=cfg.encoder, dim=MINILM_DIM if cfg.encoder == "minilm"
                                       else HASH_ENCODER_DIM)
    encoder = make_encoder(encoder_config)
    history = cfg.history or (model.cfg.history if model is not None else
                              model_config(cfg.preset, **cfg.model).history)
    data = DatasetMixture(cfg.dataset, cfg.weights or None, history=history, n_step=cfg.n_step,
                          gamma=cfg.gamma, instruction_embeddings=encoder.encode_batch)
    low, high, _ = data.return_range()
    if model is None:
        q_min = cfg.q_min if cfg.q_min is not None else min(0.0, low)
        q_max = cfg.q_max if cfg.q_max is not None else max(1.0, high)
        mean, std = data.state_stats() if cfg.state_norm else ([], [])
        model = QTransformer(model_config(
            cfg.preset, **{**dict(image_size=data.image_size, history=history,
                                  state_dim=data.state_dim, state_mean=mean, state_std=std,
                                  action_bins=tuple(data.tokenizer.bins),
                                  instruction_dim=encoder_config.dim, q_min=q_min, q_max=q_max),
                           **cfg.model})).to(device)
    _check_compatible(model, data, cfg, state)
    return model, data, encoder_config


def data_loader(cfg: TrainConfig, dataset, device, rank: int = 0, world: int = 1,
                start: int = 0):
    """A DataLoader of the batches of steps ``start`` .. ``cfg.steps - 1`` of this rank (each a
    function of the step, see :mod:`qt_ros.data.dataset_mixture`), drawn from ``dataset`` (a
    ``DatasetMixture`` or one ``QTransformerDataset``) in the shares asked for; filtered BC
    draws successful episodes only."""
    from torch.utils.data import DataLoader

    from qt_ros.data.dataset_mixture import (
        BatchReads,
        DatasetMixture,
        StepBatchSampler,
        sampling_groups,
    )

    mixture = DatasetMixture.of(dataset)
    groups = sampling_groups(mixture, source={"demonstration": cfg.demo_weight,
                                              "autonomous": cfg.autonomous_weight},
                             outcome=_outcome_weights(cfg, mixture))
    sampler = StepBatchSampler(groups, cfg.batch_size, seed=cfg.seed, rank=rank, world=world,
                               start=start, stop=cfg.steps)
    # batch_size None: each sampled batch of indices is one item, read whole (BatchReads)
    return DataLoader(BatchReads(mixture), sampler=sampler, batch_size=None,
                      num_workers=cfg.workers, pin_memory=device.type == "cuda",
                      persistent_workers=cfg.workers > 0)


def _outcome_weights(cfg: TrainConfig, data) -> dict[str, float]:
    """Sampling weight per episode outcome; filtered BC draws successful episodes only."""
    weights = {"success": cfg.success_weight, "failure": cfg.failure_weight}
    if cfg.learner.algo != "bc" or cfg.bc_episodes == "all":
        return weights
    counts: dict[str, int] = {}
    for episode in data.episodes:
        outcome = episode.get("outcome", "unknown")
        counts[outcome] = counts.get(outcome, 0) + 1
    if not counts.get("success"):
        found = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
        raise ValueError(f"dataset {', '.join(cfg.dataset)} has no successful episode ({found}), "
                         f"and --algo bc --bc-episodes successes trains on successful episodes "
                         f"only: label the successes (/recorder/label_episode, or outcome/labels "
                         f"in the topic mapping) and convert into a new dataset, or pass "
                         f"--bc-episodes all to imitate every episode")
    return {outcome: float(outcome == "success") for outcome in counts}


def _loop(cfg: TrainConfig, learner, loader, saver, monitor, start: int, world: int, device,
          autocast) -> int:
    """The gradient steps from ``start``; returns the step reached (before ``cfg.steps`` when
    ``max_minutes`` ran out or SIGTERM came)."""
    import torch
    import torch.distributed as dist

    step = start
    began = time.monotonic()
    with _stop_on_signals() as stop:
        batches = iter(loader)
        while step < cfg.steps:
            waited = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - waited
            lr = _set_learning_rate(learner, cfg, step)
            with autocast():
                metrics = learner.update(batch)
            step += 1
            if not math.isfinite(metrics["loss"]):
                raise FloatingPointError(f"loss is {metrics['loss']} at step {step}; "
                                         f"lower --lr or check the dataset")
            halt = stop.is_set() or (cfg.max_minutes > 0
                                     and time.monotonic() - began > 60 * cfg.max_minutes)
            if world > 1:  # every rank stops at the same step
                flag = torch.tensor([float(halt)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                halt = bool(flag.item())
            last = halt or step == cfg.steps
            monitor.record(step, metrics, lr, waited, last)
            if cfg.eval_every and (step % cfg.eval_every == 0 or last):
                saver.evaluate(step)
            if step % cfg.save_every == 0 or last:
                saver.save(step)
            if cfg.keep_every and (step % cfg.keep_every == 0 or last):
                saver.keep(step)
            if halt:
                break
    return step


class _Saver:
    """Writes the checkpoint, ``last/`` and ``best/`` (rank 0; every rank calls ``save``,
    which gathers the RNG states)."""

    def __init__(self, cfg, learner, data, encoder_config, extra, monitor, rank, world, device,
                 best: dict | None):
        self.cfg, self.learner, self.data = cfg, learner, data
        self.encoder_config, self.extra, self.monitor = encoder_config, extra, monitor
        self.rank, self.world, self.device = rank, world, device
        self.best = best
        self._eval_data = None

    def save(self, step: int) -> None:
        from qt_ros.qtransformer.checkpoint import save_checkpoint
        from qt_ros.qtransformer.training_state import rng_states

        rng = rng_states(self.rank, self.world, self.device)
        if self.rank != 0:
            return
        out = Path(self.cfg.out)
        save_checkpoint(out, self.learner.model, self.data.tokenizer, self.encoder_config, step,
                        self.extra)
        self._state(out / LAST, step, rng)

    def keep(self, step: int) -> None:
        """A copy of the weights in ``steps/<step>/`` (rank 0), a checkpoint of its own."""
        if self.rank != 0:
            return
        from qt_ros.qtransformer.checkpoint import save_checkpoint

        save_checkpoint(Path(self.cfg.out) / KEPT / f"{step:07d}", self.learner.model,
                        self.data.tokenizer, self.encoder_config, step, self.extra)

    def evaluate(self, step: int) -> None:
        """Offline evaluation (rank 0); keeps ``best/`` when the chosen metric improves."""
        if self.rank != 0:
            return
        from qt_ros.evaluation.offline_eval import evaluate, scalars
        from qt_ros.qtransformer.training_state import rng_states

        summary, _ = evaluate(self.learner.model, self._evaluation_data(), self.cfg.learner,
                              max_steps=self.cfg.eval_steps)
        result = scalars(summary)
        self.monitor.record_offline(step, result)
        name, higher = self.cfg.best_metric, BEST_METRICS[self.cfg.best_metric]
        value = result.get(name)
        if value is None:
            return
        if self.best is None or (value > self.best["value"] if higher
                                 else value < self.best["value"]):
            self.best = {"metric": name, "value": value, "step": step}
            self._state(Path(self.cfg.out) / BEST, step, rng_states(0, 1, self.device))

    def _state(self, directory: Path, step: int, rng) -> None:
        from qt_ros.qtransformer.training_state import save_training_state

        save_training_state(directory, self.learner, self.data.tokenizer, self.encoder_config,
                            step, self.extra, rng, sampler={"next_step": step},
                            monitor={"elapsed_s": self.monitor.elapsed, "best": self.best})

    def _evaluation_data(self):
        if self._eval_data is None:
            from qt_ros.data.torch_dataset import QTransformerDataset
            from qt_ros.qtransformer.instruction_encoder import make_encoder

            self._eval_data = QTransformerDataset(
                self.cfg.eval_dataset or self.cfg.dataset[0], history=self.data.history,
                n_step=self.cfg.n_step, gamma=self.cfg.gamma,
                instruction_embeddings=make_encoder(self.encoder_config).encode_batch)
        return self._eval_data


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based): linear warm-up, then constant or cosine
    decay to 0 at ``cfg.steps``. A function of the step, so a resumed run follows it exactly."""
    base = cfg.learner.lr
    if step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
    return base


def _set_learning_rate(learner, cfg: TrainConfig, step: int) -> float:
    lr = learning_rate(cfg, step)
    for group in learner.optimizer.param_groups:
        group["lr"] = lr
    return lr


@contextlib.contextmanager
def _stop_on_signals():
    """An event set by SIGTERM (a cluster's preemption) or a first Ctrl-C while training (main
    thread only): the loop then saves and stops after the current step. A second Ctrl-C
    interrupts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def interrupt(signum, frame):
        if signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            print("\nqt-ros train: stopping after this step (Ctrl-C again: at once)",
                  file=sys.stderr)
        stop.set()

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _autocast(cfg: TrainConfig, device):
    """A context manager factory: bf16 autocast on a GPU that supports it, else nothing."""
    import torch

    if cfg.precision == "fp32":
        return contextlib.nullcontext
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if cfg.precision == "bf16" and not supported:
        raise ValueError(f"--precision bf16 needs a CUDA GPU with bf16 support, not {device}: "
                         f"bf16 on this project's CPU VM crashed with an illegal instruction; "
                         f"use --precision fp32 (or auto) on a CPU")
    if not supported:
        return contextlib.nullcontext
    return lambda: torch.autocast("cuda", dtype=torch.bfloat16)


def _compile(learner) -> None:
    """torch.compile the online network and its target copy in place."""
    learner.model.compile()
    if learner.target is not None:
        learner.target.compile()


def _device(name: str, local_rank: int):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but this PyTorch has no CUDA device")
    return torch.device(name)


def _check_compatible(model, data, cfg: TrainConfig, state) -> None:
    mc = model.cfg
    problems = []
    if tuple(mc.image_size) != tuple(data.image_size):
        problems.append(f"image size {tuple(mc.image_size)} vs the dataset's "
                        f"{tuple(data.image_size)}")
    if mc.state_dim != data.state_dim:
        problems.append(f"state size {mc.state_dim} vs the dataset's {data.state_dim}")
    if tuple(mc.action_bins) != tuple(data.tokenizer.bins):
        problems.append(f"action bins {list(mc.action_bins)} vs the dataset's "
                        f"{data.tokenizer.bins}")
    if mc.history != data.history:
        problems.append(f"history {mc.history} vs --history {data.history}")
    where = (f"the resumed run {cfg.out}" if state is not None else
             f"checkpoint {cfg.init}" if cfg.init else "the model")
    if problems:
        raise ValueError(f"{where} does not fit dataset {', '.join(cfg.dataset)}: "
                         + "; ".join(problems))
    low, high, at = data.return_range()
    slack = 1e-5 * (1.0 + abs(mc.q_max) + abs(mc.q_min))
    if low < mc.q_min - slack or high > mc.q_max + slack:
        fix = ("leave --q-min/--q-max unset to follow the data, or widen them"
               if state is None and not cfg.init else
               "a model bounded to that range can never reach them: train a new model "
               "(without --init/--resume)")
        raise ValueError(f"returns in the data span [{low:g}, {high:g}] (highest in {at}), "
                         f"outside the Q range [{mc.q_min:g}, {mc.q_max:g}] of {where}: Q is "
                         f"bounded to that range; {fix}")
