"""The options of a training run (``TrainConfig``), its YAML file, and its algorithm's label.

Every option of ``qt-ros train`` is a field here or of ``LearnerConfig`` (the update's
hyper-parameters), declared once with its default and description; the command line is
generated from them. A run can also be described by a YAML file (``qt-ros train --config
train.yaml``) with the same names, the learner's under ``learner:`` and overrides of the
model preset's ``ModelConfig`` fields under ``model:``::

    dataset: [data/demos, data/robot]
    weights: [1, 3]
    out: runs/pick
    preset: small
    steps: 100000
    learner: {lr: 3.0e-4}
    model: {d_model: 384}

Precedence: the defaults, then the file, then options given on the command line. The
resolved configuration is saved as ``train_config.yaml`` in the run directory, so ``--config
RUN/train_config.yaml`` repeats a run and ``--resume RUN`` continues it. No torch here (``--help``
stays light).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from qt_ros.common.settings import defaults, setting
from qt_ros.data.returns import DEFAULT_GAMMA
from qt_ros.qtransformer.instruction_encoder import KINDS, EncoderConfig
from qt_ros.qtransformer.learner_config import LearnerConfig
from qt_ros.qtransformer.model_config import PRESETS, ModelConfig

CONFIG_FILE = "train_config.yaml"
# Which episodes behaviour cloning imitates.
BC_EPISODES = ("successes", "all")
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")
# Offline metrics that can choose the `best` checkpoint, and whether higher is better.
BEST_METRICS = {"td_error": False, "agreement": True}


@dataclass
class TrainConfig:
    """Options of a training run; every field but ``learner`` and ``model`` is a ``qt-ros
    train`` option."""

    dataset: tuple[str, ...] = setting(
        help="dataset directories (qt-ros convert --out), read where they are")
    out: str = setting(help="run directory to write: the checkpoint (model.safetensors + "
                            "config.json), last/ and best/, metrics, train_config.yaml, "
                            "tensorboard/ (an existing checkpoint is overwritten)")
    weights: tuple[float, ...] = setting((), "sampling share of each dataset, in the order "
                                             "given (default: equal shares)")
    preset: str = setting("small", "model size; image size, state size and bins always come "
                                   "from the dataset", choices=PRESETS)
    history: int | None = setting(None, "frames per observation (default: the preset's)")
    steps: int = setting(10000, "gradient steps")
    batch_size: int = setting(8, "transitions per step and per process")
    n_step: int = setting(1, "n of the n-step return (1: one-step TD; the paper's ablation "
                             "compares n > 1)")
    gamma: float = setting(DEFAULT_GAMMA, "discount")
    q_min: float | None = setting(None, "lowest Q value (default: the lowest return in the "
                                        "data, at most 0)")
    q_max: float | None = setting(None, "highest Q value (default: the highest return in the "
                                        "data, at least 1); a return outside [q-min, q-max] "
                                        "is an error")
    state_norm: bool = setting(False, "standardize the state with the training data's "
                                      "per-dimension mean and std, kept in the model's config "
                                      "(a new model only; --init and --resume keep theirs)")
    encoder: str = setting(EncoderConfig.kind, "instruction encoder (minilm: the pretrained "
                                               "all-MiniLM-L6-v2, offline)", choices=KINDS)
    demo_weight: float = setting(1.0, "sampling share of demonstration steps")
    autonomous_weight: float = setting(1.0, "sampling share of autonomous steps")
    success_weight: float = setting(1.0, "sampling share of the steps of successful episodes")
    failure_weight: float = setting(1.0, "sampling share of the steps of failed episodes")
    bc_episodes: str = setting(
        "successes", "with --algo bc: train on the steps of successful episodes only "
                     "(filtered BC) or of all episodes (ignored by --algo qt, which learns from "
                     "failures too)", choices=BC_EPISODES)
    lr_schedule: str = setting("constant", "learning rate after the warm-up: constant, or "
                                           "cosine decay to 0 at --steps", choices=SCHEDULES)
    warmup_steps: int = setting(0, "steps of linear learning-rate warm-up from 0")
    device: str = setting("auto", "auto (cuda when available) | cpu | cuda | cuda:N")
    precision: str = setting("auto", "auto: bf16 autocast on a GPU that supports it, else "
                                     "fp32 (never bf16 on a CPU)", choices=PRECISIONS)
    compile: bool = setting(False, "torch.compile the network (measured not to help on a "
                                   "2-core CPU; try it on a GPU)")
    workers: int = setting(2, "DataLoader worker processes")
    save_every: int = setting(1000, "steps between checkpoints (last/ and the run directory)")
    keep_every: int = setting(0, "steps between kept copies of the weights, in "
                                 "steps/<step>/ of the run directory, and one at the end, to "
                                 "choose among afterwards (qt-ros select; 0: none)")
    log_every: int = setting(50, "steps between metric lines and TensorBoard scalars")
    eval_every: int = setting(0, "steps between offline evaluations, which keep best/ (0: none)")
    eval_dataset: str | None = setting(None, "dataset of the offline evaluation (default: the "
                                             "first training dataset)")
    eval_steps: int = setting(512, "dataset steps the offline evaluation reads (evenly spaced)")
    best_metric: str = setting("td_error", "offline metric that chooses best/ (td_error: "
                                           "lowest; agreement: highest agreement with the "
                                           "demonstrations' bins)", choices=BEST_METRICS)
    tensorboard: bool = setting(True, "write TensorBoard scalars to OUT/tensorboard")
    max_minutes: float = setting(0.0, "stop (and save) after this wall time (0: no limit)")
    init: str | None = setting(None, "checkpoint to start from (weights only; --resume "
                                      "continues a run exactly)")
    seed: int = setting(0, "seeds model initialisation and sampling")
    # The update's hyper-parameters; a dict of LearnerConfig fields is accepted too.
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    # ModelConfig fields that replace the preset's (from a config file).
    model: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.dataset, (str, Path)):
            self.dataset = (str(self.dataset),)
        self.dataset = tuple(str(d) for d in self.dataset)
        self.weights = tuple(float(w) for w in self.weights)
        if isinstance(self.learner, dict):
            self.learner = LearnerConfig.from_config(self.learner)
        self.model = dict(self.model or {})
        unknown = set(self.model) - {f.name for f in dataclasses.fields(ModelConfig)}
        if unknown:
            raise ValueError(f"unknown model field(s) {sorted(unknown)}; the fields are "
                             f"those of ModelConfig")
        for name, allowed in (("bc_episodes", BC_EPISODES), ("lr_schedule", SCHEDULES),
                              ("precision", PRECISIONS), ("best_metric", tuple(BEST_METRICS))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.dataset:
            raise ValueError("no dataset given")
        if self.weights and len(self.weights) != len(self.dataset):
            raise ValueError(f"{len(self.weights)} --weights for {len(self.dataset)} datasets: "
                             f"give one weight per dataset")
        if min(self.steps, self.batch_size, self.save_every, self.log_every) < 1:
            raise ValueError("steps, batch_size, save_every and log_every must be >= 1")
        if self.keep_every < 0:
            raise ValueError("keep_every must be >= 0 (0: keep no copies)")

    def to_dict(self) -> dict:
        """Plain YAML/JSON-ready values (the resolved configuration file's content)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()
               if k not in ("learner", "model")}
        return {**out, "learner": self.learner.to_config(), "model": dict(self.model)}


def read_config_file(path: str | Path) -> dict:
    """The values of a YAML training config, checked against the fields (a typo is an error)."""
    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the training config {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise ValueError(f"training config {path} is not a mapping of option names to values")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"training config {path}: unknown option(s) {unknown} (names are "
                         f"those of `qt-ros train --help` with _ for -; learner options go "
                         f"under learner:, model fields under model:)")
    if not isinstance(values.get("learner", {}), dict):
        raise ValueError(f"training config {path}: learner: must be a mapping")
    return values


def write_config_file(cfg: TrainConfig, path: str | Path) -> Path:
    """Save the resolved configuration (read back by ``read_config_file``)."""
    import yaml

    from qt_ros.common.files import atomic_write_text

    text = ("# qt-ros train: the resolved configuration of this run (`--config` repeats it, "
            "`--resume` continues it)\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    atomic_write_text(Path(path), text)
    return Path(path)


def merge(file_values: dict, given: dict, given_learner: dict) -> TrainConfig:
    """TrainConfig from a config file's values and the options given on the command line
    (which win); everything else is the fields' default."""
    learner = {**(file_values.get("learner") or {}), **given_learner}
    values = {**{k: v for k, v in file_values.items() if k != "learner"}, **given}
    missing = [name for name in ("dataset", "out") if not values.get(name)]
    if missing:
        raise ValueError("give " + " and ".join("DATASET" if m == "dataset" else "--out"
                                                for m in missing)
                         + " (on the command line, in --config, or with --resume RUN_DIR)")
    hints = typing.get_type_hints(TrainConfig)
    values = {k: tuple(v) if isinstance(v, list) and typing.get_origin(hints[k]) is tuple
              else v for k, v in values.items()}
    return TrainConfig(**values, learner=LearnerConfig.from_config(learner))


# How an ablation shows in a label; the keys are the switches that change the algorithm
# (optimizer settings do not, nor do the data's sampling shares).
_SWITCH_LABELS = {
    "conservative_weight": lambda v: f"alpha {v:g}",
    "conservative_reduction": lambda v: f"{v} regularizer",
    "conservative_radius": lambda v: f"radius {v:g}",
    "image_shift": lambda v: f"shift {v} px",
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


def config_field_names() -> list[str]:
    """The option fields (all but ``learner`` and ``model``)."""
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("learner", "model")]

