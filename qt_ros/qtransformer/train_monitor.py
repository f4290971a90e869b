"""Watching a training run: metric lines, TensorBoard scalars, the progress bar, training.png.

Every ``log_every`` steps (and at the last), rank 0 writes one line to ``metrics.jsonl`` and the
same scalars to TensorBoard (``OUT/tensorboard``; ``tensorboard --logdir OUT``): whatever the
learner's ``update`` returns (loss terms, Q of the taken and untaken bins, target, Monte Carlo
bound hit rate, gradient norm; accuracy for BC), averaged over the DDP ranks, plus the
learning rate, samples/s over the interval and the time spent waiting for data per step. The
progress bar's total is the step at which the run will stop: ``--steps``, or with
``--max-minutes`` the step the time limit will end it at, at the speed so far, so its ETA is
the time left. On ``--resume`` the lines after the resumed step are dropped (TensorBoard's
too: ``purge_step``), so the files read as one uninterrupted run.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

METRICS = "metrics.jsonl"
OFFLINE = "offline_eval.jsonl"
TENSORBOARD = "tensorboard"


class TrainMonitor:
    """Metrics of one training session (``record`` is called on every rank, every step)."""

    def __init__(self, cfg, out: Path, start_step: int, rank: int, world: int, device,
                 resume: bool, elapsed: float = 0.0) -> None:
        from tqdm import tqdm

        self.cfg, self.out, self.rank, self.world, self.device = cfg, out, rank, world, device
        self.active = rank == 0
        self.start_step = start_step
        self.elapsed_before = elapsed
        self.started = time.monotonic()
        self._interval = {"start": time.monotonic(), "steps": 0, "wait": 0.0}
        self.log = self.writer = None
        if self.active:
            self.log = _open_log(out / METRICS, start_step if resume else None)
            if resume:
                _open_log(out / OFFLINE, start_step).close()
            self.writer = _tensorboard(out / TENSORBOARD, start_step + 1 if resume else None,
                                       cfg.tensorboard)
        self.bar = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step",
                        disable=not self.active, file=sys.stderr, dynamic_ncols=True)

    @property
    def elapsed(self) -> float:
        """Training seconds over every session of the run."""
        return self.elapsed_before + time.monotonic() - self.started

    def record(self, step: int, metrics: dict[str, float], lr: float, data_wait: float,
               last: bool) -> None:
        """One step done; every ``log_every`` steps and at the last step (``last``: the run
        stops here) log the metrics (a collective under DDP: every rank calls this)."""
        self._interval["steps"] += 1
        self._interval["wait"] += data_wait
        self.bar.update(1)
        total = self.expected_total(step)
        if total != self.bar.total:
            self.bar.total = total
            self.bar.refresh()
        if not (step % self.cfg.log_every == 0 or last):
            return
        metrics = self._mean_over_ranks(metrics)
        seconds = max(time.monotonic() - self._interval["start"], 1e-9)
        speed = {"lr": lr,
                 "samples_per_s": self._interval["steps"] * self.cfg.batch_size * self.world
                 / seconds,
                 "data_wait_s": self._interval["wait"] / self._interval["steps"]}
        self._interval = {"start": time.monotonic(), "steps": 0, "wait": 0.0}
        if not self.active:
            return
        line = {"step": step, "time": round(self.elapsed, 3), **metrics, **speed}
        self.log.write(json.dumps(line) + "\n")
        self.log.flush()
        self._scalars("train", step, metrics)
        self._scalars("speed", step, speed)
        self.bar.set_postfix(_progress(metrics))

    def record_offline(self, step: int, result: dict[str, float]) -> None:
        """An offline evaluation's figures (rank 0)."""
        if not self.active:
            return
        with open(self.out / OFFLINE, "a") as f:
            f.write(json.dumps({"step": step, **result}) + "\n")
        self._scalars("offline", step, result)

    def expected_total(self, step: int) -> int:
        """The step the run will stop at: ``--steps``, or earlier when ``--max-minutes`` will
        end it first at the speed of this session so far."""
        cfg = self.cfg
        if cfg.max_minutes <= 0 or step <= self.start_step:
            return cfg.steps
        spent = time.monotonic() - self.started
        per_step = spent / (step - self.start_step)
        left = max(0.0, 60 * cfg.max_minutes - spent)
        return max(step, min(cfg.steps, step + int(left / per_step)))

    def close(self) -> None:
        self.bar.close()
        if self.log is not None:
            self.log.close()
        if self.writer is not None:
            self.writer.close()

    def _scalars(self, group: str, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"{group}/{key}", value, step)
        self.writer.flush()

    def _mean_over_ranks(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return metrics
        import torch
        import torch.distributed as dist

        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64,
                              device=self.device)
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.world).tolist(), strict=True))


def _open_log(path: Path, keep_until: int | None):
    """The metric file, for appending after the lines up to ``keep_until`` (None: a new file)."""
    if keep_until is None or not path.exists():
        return open(path, "w")  # noqa: SIM115 - the monitor closes it
    kept = [line for line in path.read_text().splitlines()
            if line and json.loads(line).get("step", 0) <= keep_until]
    path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")  # noqa: SIM115


def _tensorboard(directory: Path, purge_step: int | None, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed: no TensorBoard scalars (pip install "
                      "tensorboard, or --no-tensorboard)", stacklevel=3)
        return None
    return SummaryWriter(str(directory), purge_step=purge_step)


def _progress(metrics: dict[str, float]) -> dict[str, str]:
    """The progress bar's figures: loss and mean Q (Q-T) or batch accuracy (BC)."""
    shown = {"loss": f"{metrics['loss']:.4f}"}
    for key, name in (("accuracy", "acc"), ("q_taken", "q")):
        if key in metrics:
            shown[name] = f"{metrics[key]:.3f}"
            break
    return shown


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
        values = [r.get(key, 0.0) for r in rows]
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
        for key in ("q_taken", "q_untaken", "target"):
            if key in rows[0]:
                ax_right.plot(steps, [r[key] for r in rows], label=key)
        ax_right.set_title("mean Q of taken (and untaken) bins and target")
    ax_right.set_xlabel("step")
    ax_right.legend(fontsize="small", ncol=3 if bc else 1)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
