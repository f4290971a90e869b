"""The Q-Transformer network (Chebotar et al., CoRL 2023), in plain PyTorch.

    instruction embedding --FiLM--> conv image encoder (EfficientNet-style MBConv blocks)
    each frame --> TokenLearner --> k tokens --> frame layers (transformer within the frame)
    trunk: transformer over [instruction token | state token | w frames x k tokens]
    head:  transformer over action tokens 1..d, token i = embedding of dimension i + embedding
           of the bin chosen for dimension i-1; each attends to the trunk's outputs and to the
           earlier action tokens (causal), and gives Q(s, a^{1:i-1}, a^i = b) for every bin b.

Action dimensions are time steps of the head, as in the paper. One teacher-forced pass gives
the Q values of every dimension (training); acting (``decode``) runs the head one cached step
per dimension.

The paper runs one 8-layer transformer over all tokens. Here the layers are split by what they
cost on a robot's CPU at each control step: the per-frame part (encoder, TokenLearner, frame
layers) depends only on the frame and the instruction, so a policy computes it once per frame
and caches it; the trunk mixes the w frames once per step; the head, run d times in sequence,
is one narrow layer.

Q values are bounded to the reward range, ``q_min + (q_max - q_min) * sigmoid(logit)``. With the
sparse binary reward of the paper (R = 1 at the last step of a successful episode, else 0) every
discounted return lies in [0, 1], so the default range is [0, 1]: bootstrapped targets cannot run
away above any achievable return, and the conservative regularizer's floor (0, the minimal
return) is the bottom of the range. For rewards in [0, r_max] at every step use
``q_max = r_max / (1 - gamma)``.

The image encoder (FiLM-EfficientNet and TokenLearner, normalized so that a frame's Q value never
depends on the rest of the batch) is :mod:`qt_ros.qtransformer.image_encoder`; the configuration
and its presets are :mod:`qt_ros.qtransformer.model_config`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from qt_ros.qtransformer.image_encoder import FiLMEfficientNet, TokenLearner
from qt_ros.qtransformer.model_config import ModelConfig

# ----------------------------------------------------------------------------- transformer


class KVCache:
    """Keys and values of every layer for one decoding sequence, preallocated."""

    def __init__(self, num_layers: int, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, heads, max_len, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.SiLU(),
                                 nn.Linear(hidden, d_model))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0, query_from: int = 0,
                kv_only: bool = False) -> torch.Tensor | None:
        """x [B, L, D] -> [B, L - query_from, D]; ``mask`` bool [L - query_from, L], True = may
        attend.

        ``query_from``: only tokens from this index on produce outputs (the others are keys and
        values only); ``kv_only``: store keys/values in ``cache`` and return nothing.
        """
        # Functional calls on the modules' parameters: at batch 1 on a CPU the module-call
        # machinery costs about as much as the arithmetic.
        b, n, d = x.shape
        h = F.layer_norm(x, (d,), self.norm1.weight, self.norm1.bias, self.norm1.eps)
        qkv = F.linear(h, self.qkv.weight, self.qkv.bias).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                          # each [B, H, L, hd]
        if cache is not None:
            k, v = cache.append(layer, k, v)
        if kv_only:
            return None
        if query_from:
            x, q = x[:, query_from:], q[:, :, query_from:]
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        y = F.linear(y.transpose(1, 2).reshape(b, x.shape[1], d), self.proj.weight, self.proj.bias)
        x = x + (F.dropout(y, drop) if drop else y)
        h = F.layer_norm(x, (d,), self.norm2.weight, self.norm2.bias, self.norm2.eps)
        fc1, fc2 = self.mlp[0], self.mlp[2]
        y = F.linear(F.silu(F.linear(h, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)
        return x + (F.dropout(y, drop) if drop else y)

    def step(self, x: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor:
        """``forward`` for one new token [B, 1, D] attending to the cache, in eval mode, with
        functional calls only (module calls cost more than the arithmetic at batch 1)."""
        b, _, d = x.shape
        h = F.layer_norm(x, (d,), self.norm1.weight, self.norm1.bias, self.norm1.eps)
        qkv = F.linear(h, self.qkv.weight, self.qkv.bias).view(b, 1, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        k, v = cache.append(layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v).reshape(b, 1, d)
        x = x + F.linear(y, self.proj.weight, self.proj.bias)
        h = F.layer_norm(x, (d,), self.norm2.weight, self.norm2.bias, self.norm2.eps)
        fc1, fc2 = self.mlp[0], self.mlp[2]
        return x + F.linear(F.silu(F.linear(h, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)


# ----------------------------------------------------------------------------- Q-Transformer


class QTransformer(nn.Module):
    """Autoregressive per-dimension Q network. See the module docstring for the layout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, D, Dh = cfg.num_dims, cfg.d_model, cfg.head_width
        if cfg.history > 0:
            self.encoder = FiLMEfficientNet(cfg)
            self.token_learner = TokenLearner(
                self.encoder.out_channels, cfg.tokens_per_frame, D,
                grid=cfg.feature_grid if cfg.position_embedding else None)
            self.frame_pos = nn.Parameter(torch.zeros(cfg.history, 1, D))
            self.token_pos = nn.Parameter(torch.zeros(1, cfg.tokens_per_frame, D))
            self.frame_blocks = nn.ModuleList(Block(D, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
                                              for _ in range(cfg.frame_layers))
        self.instruction_token = nn.Linear(cfg.instruction_dim, D)
        self.state_token = nn.Linear(cfg.state_dim, D) if cfg.state_dim else None
        if cfg.state_mean:  # the data's statistics, from the config (not trained, not saved)
            self.register_buffer("state_mean", torch.tensor(cfg.state_mean), persistent=False)
            self.register_buffer("state_std", torch.tensor(cfg.state_std), persistent=False)
        self.trunk = nn.ModuleList(Block(D, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
                                   for _ in range(cfg.num_layers))
        # The head attends to the trunk outputs, projected to its width.
        self.head_input = nn.Linear(D, Dh) if Dh != D else nn.Identity()
        # Action token i = embedding of dimension i + embedding of the bin chosen for i-1.
        self.dim_embedding = nn.Parameter(torch.zeros(d, Dh))
        self.start_embedding = nn.Parameter(torch.zeros(Dh))
        self.bin_embedding = nn.Embedding(max(d - 1, 1) * cfg.max_bins, Dh)
        self.head_blocks = nn.ModuleList(Block(Dh, cfg.num_heads, cfg.head_mlp_ratio,
                                               cfg.dropout) for _ in range(cfg.head_layers))
        self.norm = nn.LayerNorm(Dh)
        # One output layer per dimension, stored as one tensor: [d, Dh, max_bins].
        self.head_weight = nn.Parameter(torch.zeros(d, Dh, cfg.max_bins))
        self.head_bias = nn.Parameter(torch.zeros(d, cfg.max_bins))
        valid = torch.arange(cfg.max_bins)[None, :] < torch.tensor(cfg.action_bins)[:, None]
        self.register_buffer("valid_mask", valid, persistent=False)        # [d, max_bins]
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for p in (self.dim_embedding, self.start_embedding, self.head_weight):
            nn.init.normal_(p, std=0.02)
        if self.cfg.history > 0:
            nn.init.normal_(self.frame_pos, std=0.02)
            nn.init.normal_(self.token_pos, std=0.02)
            if self.token_learner.position is not None:
                nn.init.normal_(self.token_learner.position, std=0.02)
            # FiLM starts as the identity (gamma = beta = 0).
            nn.init.zeros_(self.encoder.film.weight)
        # Residual output projections scaled down with depth (GPT-2).
        depth = self.cfg.frame_layers + self.cfg.num_layers + self.cfg.head_layers
        for block in [*getattr(self, "frame_blocks", []), *self.trunk, *self.head_blocks]:
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * depth))
            nn.init.normal_(block.mlp[2].weight, std=0.02 / math.sqrt(2 * depth))

    # ---- observation -> trunk tokens

    @property
    def context_length(self) -> int:
        cfg = self.cfg
        return 1 + (cfg.state_dim > 0) + cfg.history * cfg.tokens_per_frame

    def film_params(self, instruction_embedding: torch.Tensor) -> torch.Tensor | None:
        """[B, E] -> FiLM parameters of the image encoder (None for a state-only model)."""
        if self.cfg.history == 0:
            return None
        return self.encoder.film_params(instruction_embedding)

    def encode_frames(self, frames: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """frames uint8 [N, 3, H, W], film [N, F] -> per-frame tokens [N, k, D].

        A frame's tokens depend only on the frame and the instruction, so a policy caches them.
        """
        # channels-last: the stem's convolution then writes the [N, h, w, C] map directly
        pixels = frames.to(film.dtype, memory_format=torch.channels_last)
        tokens = self.token_learner(self.encoder(pixels, film)) + self.token_pos
        for block in self.frame_blocks:
            tokens = block(tokens)
        return tokens

    def context(self, frame_tokens: torch.Tensor | None, instruction_embedding: torch.Tensor,
                state: torch.Tensor | None) -> torch.Tensor:
        """Frame tokens [B, w, k, D] (None if history 0), instruction [B, E], state [B, S] ->
        trunk outputs [B, Lc, D]."""
        parts = [self.instruction_token(instruction_embedding)[:, None]]
        if self.state_token is not None:
            if state is None or state.shape[-1] != self.cfg.state_dim:
                got = None if state is None else tuple(state.shape)
                raise ValueError(f"this model needs a state vector of size {self.cfg.state_dim}, "
                                 f"got {got}")
            if self.cfg.state_mean:
                state = (state - self.state_mean) / self.state_std
            parts.append(self.state_token(state)[:, None])
        if self.cfg.history > 0:
            tokens = frame_tokens + self.frame_pos                         # [B, w, k, D]
            parts.append(tokens.flatten(1, 2))
        x = torch.cat(parts, dim=1)
        for block in self.trunk:
            x = block(x)
        return x

    def observe(self, frames: torch.Tensor | None, instruction_embedding: torch.Tensor,
                state: torch.Tensor | None) -> torch.Tensor:
        """frames uint8 [B, w, 3, H, W] -> trunk outputs [B, Lc, D]."""
        frame_tokens = None
        if self.cfg.history > 0:
            b, w = frames.shape[:2]
            if w != self.cfg.history or tuple(frames.shape[3:]) != self.cfg.image_size:
                raise ValueError(f"frames of shape {tuple(frames.shape)} do not match the model "
                                 f"(history {self.cfg.history}, image {self.cfg.image_size})")
            film = self.film_params(instruction_embedding)
            film = film[:, None].expand(b, w, film.shape[-1]).reshape(b * w, -1)
            frame_tokens = self.encode_frames(frames.flatten(0, 1), film).unflatten(0, (b, w))
        return self.context(frame_tokens, instruction_embedding, state)

    # ---- trunk outputs -> Q values

    def action_tokens(self, prev_bins: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Inputs [B, m, D] of the action tokens of dimensions ``first``..``first + m - 1``.

        ``prev_bins[:, j]`` is the bin chosen for dimension ``first + j - 1`` (ignored for
        dimension 0, which gets the start embedding).
        """
        m = prev_bins.shape[1]
        dims = torch.arange(first, first + m, device=prev_bins.device)
        x = self.bin_embedding((dims - 1).clamp(min=0) * self.cfg.max_bins + prev_bins)
        if first == 0:
            x = torch.cat([self.start_embedding.expand(x.shape[0], 1, -1), x[:, 1:]], dim=1)
        return x + self.dim_embedding[first:first + m]

    def q_head(self, h: torch.Tensor, first: int = 0, bounded: bool = True) -> torch.Tensor:
        """Head outputs of action tokens [B, m, D] -> Q values [B, m, max_bins] in
        [q_min, q_max] (``bounded=False``: the logits before the sigmoid, for BC)."""
        m = h.shape[1]
        w = self.head_weight[first:first + m]
        logits = torch.einsum("bmd,mdk->bmk", self.norm(h), w) + self.head_bias[first:first + m]
        return self.bound_q(logits) if bounded else logits

    # Sigmoid-bounded Q in [q_min, q_max] (a deviation): docs/design.md 3.8.
    def bound_q(self, logits: torch.Tensor) -> torch.Tensor:
        q = torch.sigmoid(logits)
        if (self.cfg.q_min, self.cfg.q_max) != (0.0, 1.0):
            q = self.cfg.q_min + (self.cfg.q_max - self.cfg.q_min) * q
        return q

    def q_from_context(self, context: torch.Tensor, action_bins: torch.Tensor,
                       num_dims: int | None = None, bounded: bool = True) -> torch.Tensor:
        """Teacher-forced Q values of the first ``num_dims`` dimensions: [B, m, max_bins].

        Row i is Q(s, a^{1:i-1} = action_bins[:, :i-1], a^i = b) for every bin b.
        """
        m = self.cfg.num_dims if num_dims is None else num_dims
        context = self.head_input(context)
        lc = context.shape[1]
        prev = F.pad(action_bins[:, :m - 1], (1, 0))                  # bin of dimension i-1
        x = self.action_tokens(prev)
        # Action token i sees every trunk output and action tokens 0..i.
        mask = torch.ones(m, lc + m, dtype=torch.bool, device=x.device)
        mask[:, lc:] = torch.ones(m, m, dtype=torch.bool, device=x.device).tril_()
        for block in self.head_blocks:
            x = block(torch.cat([context, x], dim=1), mask, query_from=lc)
        return self.q_head(x, bounded=bounded)

    def forward(self, frames: torch.Tensor | None, instruction_embedding: torch.Tensor,
                state: torch.Tensor | None, action_bins: torch.Tensor,
                num_dims: int | None = None, bounded: bool = True) -> torch.Tensor:
        """Q values [B, m, max_bins] of observations (frames uint8 [B, w, 3, H, W]) given the
        data's bins [B, d]. The learner trains exactly this function and ``decode`` acts on it.
        ``bounded=False`` gives the logits before the sigmoid (behaviour cloning's outputs)."""
        return self.q_from_context(self.observe(frames, instruction_embedding, state),
                                   action_bins, num_dims, bounded)

    # ---- acting

    @torch.no_grad()
    def decode(self, context: torch.Tensor, choose: Callable[[int, torch.Tensor], torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Autoregressive decoding with a KV cache over the head: keys and values of the trunk
        outputs are computed once, then each dimension is one single-token step.

        ``choose(i, q [B, max_bins]) -> bins [B]`` picks dimension i's bin (invalid bins of q
        are -inf). Returns bins int64 [B, d] and their Q values [B, d].
        """
        cfg = self.cfg
        context = self.head_input(context)
        b, lc, width = context.shape
        cache = KVCache(len(self.head_blocks), b, cfg.num_heads, lc + cfg.num_dims,
                        width // cfg.num_heads, context.dtype, context.device)
        for i, block in enumerate(self.head_blocks):
            block(context, cache=cache, layer=i, kv_only=True)
        cache.length = lc
        # The same arithmetic as ``action_tokens`` and ``q_head``, one dimension at a time and
        # with as few ops as possible (each op costs microseconds at batch 1 on a CPU).
        bin_table = self.bin_embedding.weight.view(-1, cfg.max_bins, width)
        chosen_bins, chosen_q = [], []
        chosen = None
        for dim in range(cfg.num_dims):
            if dim == 0:
                x = (self.start_embedding + self.dim_embedding[0]).expand(b, 1, width)
            else:
                x = (bin_table[dim - 1].index_select(0, chosen) + self.dim_embedding[dim])[:, None]
            for i, block in enumerate(self.head_blocks):
                x = block.step(x, cache, i)
            cache.length += 1
            h = F.layer_norm(x[:, 0], (width,), self.norm.weight, self.norm.bias, self.norm.eps)
            q = self.bound_q(torch.addmm(self.head_bias[dim], h, self.head_weight[dim]))
            if cfg.action_bins[dim] < cfg.max_bins:
                q = q.masked_fill(~self.valid_mask[dim], float("-inf"))
            chosen = choose(dim, q)
            chosen_bins.append(chosen)
            chosen_q.append(q.gather(1, chosen[:, None]))
        return torch.stack(chosen_bins, 1), torch.cat(chosen_q, 1)


def greedy(_dim: int, q: torch.Tensor) -> torch.Tensor:
    """Argmax bin (ties -> the lowest bin, as ``torch.argmax``)."""
    return q.argmax(dim=-1)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (weights) of a module."""
    return sum(p.numel() for p in model.parameters())
