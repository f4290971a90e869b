"""The learner's hyper-parameters and ablation switches (``LearnerConfig``), without PyTorch.

Kept apart from :mod:`qt_ros.qtransformer.learner` so that ``qt-ros train --help``, whose learner
options are generated from these fields, never imports torch. The defaults are the paper's
algorithm; ``algo="bc"`` swaps the Q-learning update for behaviour cloning on the same network
(the baseline). docs/design.md explains each switch (sections 3.3-3.5, 3.9).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from qt_ros.common.settings import setting

# Training objectives: the Q-Transformer, and behaviour cloning on the same network.
ALGORITHMS = ("qt", "bc")
# How the conservative term combines the untaken bins of a dimension.
REDUCTIONS = ("sum", "mean")
# The per-bin loss toward a target in value space.
VALUE_LOSSES = ("bce", "mse")


@dataclass
class LearnerConfig:
    """Hyper-parameters and ablation switches of the update (defaults: the paper's algorithm).

    With ``algo="bc"`` only the optimizer's fields (lr, weight_decay, betas, grad_clip) apply.
    """

    algo: str = setting(
        "qt", "training objective: qt = the Q-Transformer; bc = the behaviour-cloning "
              "baseline on the same network and greedy decoder (cross-entropy on the data's "
              "bins; of the options below only lr, weight-decay, betas and grad-clip apply; "
              "see --bc-episodes)", choices=ALGORITHMS)
    lr: float = setting(1e-4, "AdamW learning rate")
    weight_decay: float = setting(
        0.01, "AdamW decoupled weight decay on matrices (0 turns AdamW into Adam)")
    betas: tuple[float, float] = setting((0.9, 0.999), "AdamW moment decay rates")
    grad_clip: float = setting(
        1.0, "clip the global gradient norm to this (0 turns clipping off)")
    target_network: bool = setting(
        True, "bootstrap from a Polyak-averaged target network (off: from the online network "
              "itself, still without gradients and in eval mode)")
    tau: float = setting(
        0.005, "Polyak rate: target <- (1 - tau) target + tau online after every update "
               "(1: copy)")
    autoregressive_targets: bool = setting(
        True, "an intermediate dimension i < d bootstraps from dimension i+1 at the same state "
              "(off: every dimension gets the last dimension's Bellman target)")
    bootstrap: bool = setting(
        True, "the last dimension bootstraps from the next state (off: its target is the "
              "n-step reward alone, Monte Carlo regression when n covers the episode)")
    mc_lower_bound: bool = setting(
        True, "replace every target by max(target, Monte Carlo return) (off: one of the "
              "paper's ablations)")
    conservative_weight: float = setting(
        1.0, "alpha: weight of the regularizer pulling the Q of untaken bins toward q_min "
             "(the paper's ablation: --alpha 0, no conservative term)", flag="--alpha")
    conservative_reduction: str = setting(
        "sum", "how the regularizer combines a dimension's untaken bins: sum (weight alpha per "
               "bin; measured to learn, docs/design.md 3.4) or mean (weight alpha/(K-1) per "
               "bin, the paper's text: with 256 bins the untaken bins stay near the Q of the "
               "bins taken elsewhere and the greedy action stops depending on the state)",
        choices=REDUCTIONS)
    conservative_radius: float = setting(
        0.0, "untaken bins this close to the data's bin (as a fraction of the dimension's "
             "range) are left out of the regularizer: the data's own noise, not actions it "
             "never took. 0 = the paper's (every untaken bin). A deviation from the paper "
             "(docs/design.md 3.4): with the sum, a bin's Q converges to p*Q/(p + (1-p)*alpha) "
             "for a bin the data takes with frequency p, so noisy data shrinks every dimension's "
             "values and the shrinkage compounds through the autoregressive max")
    image_shift: int = setting(
        0, "random-shift augmentation: every training frame moves by up to this many pixels "
           "in x and y (edges repeated; a sample's history moves together; next frames draw "
           "their own shift), for Q-T and BC alike. 0 = off, the paper's (not in the paper: "
           "DrQ's augmentation; docs/design.md 3.5)")
    value_loss: str = setting(
        "bce", "per-bin loss toward the target (TD) and toward q_min (regularizer), both in "
               "value space: bce = binary cross-entropy of the sigmoid-bounded Q against the "
               "target scaled to [0, 1] (the same minimiser as mse, without the sigmoid's "
               "vanishing gradient far from the target; docs/design.md 3.4) or mse = 1/2 "
               "squared error (the paper's)", choices=VALUE_LOSSES)

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if self.algo not in ALGORITHMS:
            raise ValueError(f"algo must be one of {ALGORITHMS}, got {self.algo!r}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("lr must be > 0; weight_decay and grad_clip >= 0")
        if self.conservative_reduction not in REDUCTIONS:
            raise ValueError(f"conservative_reduction must be one of {REDUCTIONS}, got "
                             f"{self.conservative_reduction!r}")
        if self.value_loss not in VALUE_LOSSES:
            raise ValueError(f"value_loss must be one of {VALUE_LOSSES}, got "
                             f"{self.value_loss!r}")
        if not 0.0 <= self.conservative_radius < 1.0:
            raise ValueError(f"conservative_radius must be in [0, 1), got "
                             f"{self.conservative_radius}")
        if self.image_shift < 0:
            raise ValueError(f"image_shift must be >= 0 pixels, got {self.image_shift}")
        if self.conservative_weight < 0:
            raise ValueError(f"conservative_weight must be >= 0, got {self.conservative_weight}")

    def to_config(self) -> dict:
        """The fields as a JSON-ready dict (as stored in a checkpoint's config)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict) -> LearnerConfig:
        """Inverse of :meth:`to_config`; unknown keys are an error (a typo is not ignored)."""
        unknown = set(config) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown learner config field(s): {sorted(unknown)}")
        return cls(**config)
