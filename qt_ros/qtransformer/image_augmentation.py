"""Random-shift image augmentation of training batches (DrQ, Kostrikov et al. 2020).

Each sample's frames are padded by ``pad`` pixels (edge pixels repeated) and cropped back to
their size at a random offset: the picture moves by up to ``pad`` pixels in each direction.
All frames of one sample's history move together, so the motion between them is kept. Draws
from torch's global generator (on the frames' device), which the training state saves, so a
resumed run draws the same shifts. docs/design.md 3.5 describes it; 7.1 measures it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(frames: torch.Tensor, pad: int) -> torch.Tensor:
    """uint8 frames [B, w, C, H, W] -> the same frames, each sample shifted by up to ``pad``."""
    if pad <= 0:
        return frames
    if frames.dim() != 5:
        raise ValueError(f"random_shift needs frames [B, w, C, H, W], got {tuple(frames.shape)}")
    b, w, c, h, wd = frames.shape
    padded = F.pad(frames.reshape(b, w * c, h, wd).float(), (pad, pad, pad, pad),
                   mode="replicate")
    dev = frames.device
    top = torch.randint(0, 2 * pad + 1, (b,), device=dev)
    left = torch.randint(0, 2 * pad + 1, (b,), device=dev)
    rows = (top[:, None] + torch.arange(h, device=dev))[:, None, :, None]       # [B, 1, H, 1]
    cols = (left[:, None] + torch.arange(wd, device=dev))[:, None, None, :]     # [B, 1, 1, W]
    batch = torch.arange(b, device=dev)[:, None, None, None]
    channel = torch.arange(w * c, device=dev)[None, :, None, None]
    out = padded[batch, channel, rows, cols]                                  # [B, w*C, H, W]
    return out.to(frames.dtype).reshape(frames.shape)
