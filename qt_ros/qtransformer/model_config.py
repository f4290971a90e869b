"""The Q-Transformer's configuration: every field that rebuilds the network, and named presets.

Saved in every checkpoint's ``config.json`` (``to_config`` / ``from_config``), so a checkpoint
alone rebuilds its model; the network itself is :mod:`qt_ros.qtransformer.model`. Importing this
module needs no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network (saved in every checkpoint's config.json).

    Attributes:
        image_size: (height, width) of the frames the encoder takes; policies resize to this.
        history: number of frames w in the observation (0: no images, a state-only model).
        instruction_dim: size of the instruction embedding (384 for all-MiniLM-L6-v2).
        state_dim: size of the proprioceptive state vector (0: none).
        state_mean, state_std: per-dimension mean and standard deviation of the state in the
            training data (``qt-ros train --state-norm``); the model standardizes the state
            with them before its state token, so a dimension of millimetres (a finger's
            opening) weighs as much as one of decimetres. Empty: the state is used as given.
        action_bins: bins of each action dimension, in autoregressive order.
        stem_channels: output channels of the stem convolution.
        stem_stride: 2 (EfficientNet's 3x3 stride-2 stem convolution) or 4 or 8 (a patchify
            stem: non-overlapping s x s patches, linearly projected, as in ConvNeXt/ViT).
        stage_channels: output channels of each MBConv stage.
        stage_blocks: MBConv blocks per stage (the first block of a stage carries the stride).
        stage_strides: stride of each stage.
        expand_ratio: MBConv inverted-bottleneck expansion.
        tokens_per_frame: TokenLearner tokens k per frame (paper: 8).
        position_embedding: add a learned embedding of each feature-map cell's position to the
            feature map before the TokenLearner (off: the tokens carry no information on where
            in the frame a feature is, and the policy cannot locate the object;
            docs/design.md 3.2).
        d_model: transformer width.
        frame_layers: transformer blocks over the k tokens of one frame (cached with the frame,
            so they cost one frame's work per control step).
        num_layers: trunk transformer blocks over the tokens of all w frames.
        head_layers: head transformer blocks over the action tokens (autoregressive).
        head_d_model: width of the head (0: d_model). Acting reads the head's weights once per
            action dimension, so a narrower head that stays in the CPU cache acts faster.
        num_heads: attention heads.
        mlp_ratio: hidden size of the transformer MLPs relative to d_model.
        head_mlp_ratio: the same for the head.
        dropout: dropout in the transformer (0 keeps train and eval mode identical).
        q_min: smallest Q value (the minimal return; the conservative regularizer's target).
        q_max: largest Q value (the maximal return).
    """

    image_size: tuple[int, int] = (64, 64)
    history: int = 6
    instruction_dim: int = 384
    state_dim: int = 0
    state_mean: tuple[float, ...] = ()
    state_std: tuple[float, ...] = ()
    action_bins: tuple[int, ...] = (256,) * 7 + (2,)
    stem_channels: int = 96
    stem_stride: int = 8
    stage_channels: tuple[int, ...] = (128, 256)
    stage_blocks: tuple[int, ...] = (1, 1)
    stage_strides: tuple[int, ...] = (1, 2)
    expand_ratio: int = 4
    tokens_per_frame: int = 4
    position_embedding: bool = True
    d_model: int = 256
    frame_layers: int = 6
    num_layers: int = 4
    head_layers: int = 1
    head_d_model: int = 128
    num_heads: int = 8
    mlp_ratio: float = 4.0
    head_mlp_ratio: float = 4.0
    dropout: float = 0.0
    q_min: float = 0.0
    q_max: float = 1.0

    def __post_init__(self) -> None:
        self.image_size = tuple(int(v) for v in self.image_size)
        self.action_bins = tuple(int(b) for b in self.action_bins)
        self.stage_channels = tuple(int(c) for c in self.stage_channels)
        self.stage_blocks = tuple(int(n) for n in self.stage_blocks)
        self.stage_strides = tuple(int(s) for s in self.stage_strides)
        self.state_mean = tuple(float(v) for v in self.state_mean)
        self.state_std = tuple(float(v) for v in self.state_std)
        if (self.state_mean or self.state_std) and not (
                len(self.state_mean) == len(self.state_std) == self.state_dim
                and min(self.state_std) > 0):
            raise ValueError(f"state_mean and state_std need state_dim ({self.state_dim}) "
                             f"values each, std > 0: got {list(self.state_mean)} and "
                             f"{list(self.state_std)}")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"image_size must be (height, width) >= 8, got {self.image_size}")
        if not (len(self.stage_channels) == len(self.stage_blocks) == len(self.stage_strides)):
            raise ValueError("stage_channels, stage_blocks and stage_strides need the same length")
        if self.d_model % self.num_heads or self.head_width % self.num_heads:
            raise ValueError(f"d_model {self.d_model} and head_d_model {self.head_width} must "
                             f"be divisible by num_heads {self.num_heads}")
        if not self.action_bins or min(self.action_bins) < 2:
            raise ValueError(f"action_bins needs >= 1 dimension of >= 2 bins: {self.action_bins}")
        if (min(self.history, self.state_dim, self.frame_layers) < 0
                or min(self.tokens_per_frame, self.num_layers, self.head_layers) < 1):
            raise ValueError("history, state_dim and frame_layers must be >= 0, tokens_per_frame, "
                             "num_layers and head_layers >= 1")
        if self.stem_stride not in (2, 4, 8):
            raise ValueError(f"stem_stride must be 2, 4 or 8, got {self.stem_stride}")
        if self.history and any(v % self.stem_stride for v in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be divisible by stem_stride "
                             f"{self.stem_stride}")
        if not self.q_max > self.q_min:
            raise ValueError(f"q_max ({self.q_max}) must be above q_min ({self.q_min})")

    @property
    def num_dims(self) -> int:
        return len(self.action_bins)

    @property
    def head_width(self) -> int:
        return self.head_d_model or self.d_model

    @property
    def feature_grid(self) -> tuple[int, int]:
        """(rows, columns) of the image encoder's output feature map."""
        down = self.stem_stride
        for s in self.stage_strides:
            down *= s
        return tuple(-(-v // down) for v in self.image_size)

    @property
    def max_bins(self) -> int:
        return max(self.action_bins)

    def to_config(self) -> dict:
        """Plain JSON-safe dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown model config field(s): {sorted(unknown)}")
        return cls(**config)


# Named configurations. The defaults above are `small` (9.5M parameters at 8 x 256 bins), sized
# for a robot's CPU: most of its layers are per-frame (cached while acting), the temporal trunk
# is short and the head, run once per action dimension, is narrow. `base` follows the paper's
# scale (RT-1-like: 8 transformer layers of width 512 over 8 tokens per frame, larger images).
# Sizes against the paper's: docs/design.md 3.2 and 3.8.
PRESETS: dict[str, dict] = {
    "tiny": dict(image_size=(32, 32), history=2, stem_channels=16, stem_stride=4,
                 stage_channels=(16, 32), stage_blocks=(1, 1), stage_strides=(1, 2),
                 expand_ratio=2, tokens_per_frame=2, d_model=32, frame_layers=1, num_layers=1,
                 head_layers=1, head_d_model=0, num_heads=2, mlp_ratio=2.0, head_mlp_ratio=2.0),
    "small": dict(),
    "base": dict(image_size=(128, 128), stem_channels=64, stem_stride=4,
                 stage_channels=(64, 128, 256, 384), stage_blocks=(1, 2, 2, 2),
                 stage_strides=(1, 2, 2, 1), tokens_per_frame=8, d_model=512, frame_layers=2,
                 num_layers=8, head_layers=2, head_d_model=0),
}


def model_config(preset: str = "small", **overrides) -> ModelConfig:
    """The named preset (``tiny``, ``small``, ``base``) with some fields replaced."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset '{preset}'; choose one of {sorted(PRESETS)}")
    base = ModelConfig(**PRESETS[preset])
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def mismatch(cfg: ModelConfig, tokenizer_bins, encoder_dim: int) -> str | None:
    """Why a tokenizer (its bins) or an instruction encoder (its dimension) cannot go with a
    model of ``cfg``, or None when both fit. Saving, loading and acting all check this."""
    if tuple(tokenizer_bins) != tuple(cfg.action_bins):
        return (f"tokenizer bins {list(tokenizer_bins)} do not match the model's action bins "
                f"{list(cfg.action_bins)}")
    if encoder_dim != cfg.instruction_dim:
        return (f"the instruction encoder's {encoder_dim}-d embeddings do not match the model's "
                f"instruction_dim {cfg.instruction_dim}")
    return None
