"""The image encoder of the Q-Transformer: a FiLM-conditioned EfficientNet and a TokenLearner.

    frame --> stem --> MBConv blocks, each FiLM-conditioned on the instruction --> feature map
    feature map --> TokenLearner --> k tokens per frame

As RT-1's FiLM-EfficientNet, with two changes for a robot's CPU and for acting on the Q that was
trained:

- It normalizes with LayerNorm over channels, not EfficientNet's BatchNorm: the Q value of a frame
  must not depend on the rest of the batch, or the Q the policy acts on (batch 1, eval mode)
  would differ from the Q the learner trained (batch B, train mode).
- Feature maps are channels-last [N, H, W, C]: 1x1 convolutions are then plain matrix products
  (nn.Linear) and LayerNorm normalizes over channels, which on CPU is several times faster at
  batch 1 than NCHW convolutions and GroupNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qt_ros.qtransformer.model_config import ModelConfig


class MBConv(nn.Module):
    """EfficientNet inverted-bottleneck block (expand, depthwise, squeeze-excite, project),
    FiLM-conditioned on the instruction after the residual sum (as in RT-1's FiLM-EfficientNet).

    One LayerNorm at the block input (pre-norm, as in ConvNeXt) instead of a norm after every
    convolution: at batch 1 on a CPU each extra op costs more than its arithmetic.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.norm = nn.LayerNorm(c_in)
        self.expand = nn.Linear(c_in, hidden) if expand != 1 else None
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden)
        squeeze = max(4, c_in // 4)
        self.se_reduce = nn.Linear(hidden, squeeze)
        self.se_expand = nn.Linear(squeeze, hidden)
        self.project = nn.Linear(hidden, c_out)
        self.residual = stride == 1 and c_in == c_out
        self.out_channels = c_out

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """x [N, H, W, C], gamma/beta [N, C_out] -> [N, H', W', C_out]."""
        h = self.norm(x)
        if self.expand is not None:
            h = F.silu(self.expand(h))
        # Depthwise conv on a channels-last view (no copy; oneDNN's fastest layout here).
        h = F.silu(self.depthwise(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        s = self.se_expand(F.silu(self.se_reduce(h.mean((1, 2), keepdim=True))))
        h = self.project(h * torch.sigmoid(s))
        if self.residual:
            h = h + x
        # FiLM (Perez et al.): gamma and beta start at 0, so the block starts unconditioned.
        return torch.addcmul(beta[:, None, None], h, 1 + gamma[:, None, None])


class FiLMEfficientNet(nn.Module):
    """Conv encoder of one frame, every block FiLM-conditioned on the instruction embedding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # stem_stride 2: EfficientNet's 3x3 stride-2 convolution. 4 or 8: a patchify stem (a
        # convolution with kernel = stride, computed as one matrix product over the patches),
        # which cuts the compute of the first blocks 4-16x: what a CPU budget needs.
        self.patch = 0 if cfg.stem_stride == 2 else cfg.stem_stride
        if self.patch:
            self.stem = nn.Linear(3 * self.patch ** 2, cfg.stem_channels)
        else:
            self.stem = nn.Conv2d(3, cfg.stem_channels, 3, 2, 1)
        blocks = []
        c = cfg.stem_channels
        for c_out, n, stride in zip(cfg.stage_channels, cfg.stage_blocks, cfg.stage_strides,
                                    strict=True):
            for j in range(n):
                blocks.append(MBConv(c, c_out, stride if j == 0 else 1, cfg.expand_ratio))
                c = c_out
        self.blocks = nn.ModuleList(blocks)
        self.film_sizes = [b.out_channels for b in blocks]
        # One linear layer for all FiLM parameters: a single matmul per instruction.
        self.film = nn.Linear(cfg.instruction_dim, 2 * sum(self.film_sizes))
        self.out_channels = c

    def film_params(self, instruction_embedding: torch.Tensor) -> torch.Tensor:
        """[B, E] -> [B, F]: every block's (gamma, beta); computed once per instruction."""
        return self.film(instruction_embedding)

    def forward(self, pixels: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """pixels float [N, 3, H, W], values 0..255 (the frames, converted), film [N, F] ->
        feature map [N, h, w, C]. The network sees the frames scaled to [-1, 1]."""
        if self.patch:
            x = self._patchify(pixels)
        else:
            x = self.stem(pixels * (2.0 / 255.0) - 1.0).permute(0, 2, 3, 1)
        offset = 0
        for block, c in zip(self.blocks, self.film_sizes, strict=True):
            gamma = film[:, offset:offset + c]
            beta = film[:, offset + c:offset + 2 * c]
            offset += 2 * c
            x = block(x, gamma, beta)
        return x

    def _patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        """The patch stem: a linear layer on each p x p patch of the frame scaled to [-1, 1],
        run as one convolution (kernel = stride = p) on the pixels, with the scaling folded
        into its weights: W (x / 127.5 - 1) + b = (W / 127.5) x + (b - sum W). The same
        function as cutting the scaled frame into patches, without a pass over the frames to
        scale them or a copy to gather the patches (docs/design.md 3.2)."""
        p = self.patch
        weight = self.stem.weight.view(self.stem.out_features, 3, p, p)
        bias = self.stem.bias - weight.sum((1, 2, 3))
        return F.conv2d(pixels, weight * (2.0 / 255.0), bias, stride=p).permute(0, 2, 3, 1)


class TokenLearner(nn.Module):
    """Reduce a feature map to k tokens, each a learned spatial attention-weighted average.

    With ``grid`` (the feature map's rows and columns), a learned embedding of each cell's
    position is added to the features first. Without it the tokens are averages of features
    that carry no position, so the network cannot tell where in the frame the object is (a
    probe regressing the block's position from the tokens reached R^2 ~0.2 without it, ~0.97
    with it: docs/design.md 3.2).
    """

    def __init__(self, channels: int, num_tokens: int, d_model: int,
                 grid: tuple[int, int] | None = None):
        super().__init__()
        self.position = (nn.Parameter(torch.zeros(grid[0] * grid[1], channels))
                         if grid else None)
        self.norm = nn.LayerNorm(channels)
        self.attention = nn.Linear(channels, num_tokens)
        self.out = nn.Linear(channels, d_model)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """[N, h, w, C] -> [N, k, D]."""
        x = feature_map.flatten(1, 2)                                # [N, hw, C]
        if self.position is not None:
            x = x + self.position
        x = self.norm(x)
        weights = self.attention(x).softmax(dim=1)                   # [N, hw, k], sums to 1 over hw
        return self.out(weights.transpose(1, 2) @ x)                  # [N, k, D]
