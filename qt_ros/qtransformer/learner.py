"""The offline Q-Transformer update (Chebotar et al. 2023, Sec. 3-4; see docs/design.md).

For a transition (s_t, a_t) with d action dimensions and Q_i = Q(s_t, a_t^{1:i-1}, a^i):

    target_i  = max_b Q_target(s_t, a_t^{1:i}, a^{i+1} = b)                        i < d
    target_d  = R_t^(n) + gamma^n (1 - done) max_b Q_target(s_{t+n}, a^1 = b)     (n-step)
    target_i <- max(target_i, MC_t)              (Monte Carlo lower bound, per transition)
    loss      = mean over batch and dimensions of
                1/2 (Q_i(a_t^i) - target_i)^2
                + alpha * sum over untaken bins b of 1/2 (Q_i(b) - q_min)^2
                  (``conservative_reduction="mean"``: the mean over them, the paper's text;
                  ``conservative_radius``: bins near the data's bin are left out, a deviation)

The batch supplies R^(n) (``reward``, the n-step discounted reward sum), gamma^n (``discount``),
``done`` (the episode ends within the n steps: nothing to bootstrap) and ``mc_return``; the
dataset chooses n (n = 1 is one-step TD). Q_target is a Polyak-averaged copy of the network,
always evaluated in eval mode and without gradients. Every piece is a switch in
``LearnerConfig`` (:mod:`qt_ros.qtransformer.learner_config`) so each can be ablated; the
defaults are the paper's algorithm.

The pure functions ``bellman_targets`` and ``q_transformer_loss`` hold all the arithmetic, so
tests can check them against hand-computed numbers.

``LearnerConfig(algo="bc")`` makes the same learner train behaviour cloning instead
(:mod:`qt_ros.qtransformer.behavior_cloning`): same network, optimizer and step, a
cross-entropy on the data's bins, no target network.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from qt_ros.qtransformer.behavior_cloning import behavior_cloning_loss
from qt_ros.qtransformer.image_augmentation import random_shift
from qt_ros.qtransformer.learner_config import LearnerConfig

BATCH_KEYS = ("frames", "instruction_embedding", "state", "action_bins", "reward", "next_frames",
              "next_state", "done", "discount", "mc_return")
# Behaviour cloning reads only the observation and the data's bins.
BC_BATCH_KEYS = ("frames", "instruction_embedding", "state", "action_bins")


def masked_max(q: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Max over the last axis (bins) of q [..., K], counting only valid bins (bool [..., K])."""
    return q.masked_fill(~valid, float("-inf")).amax(dim=-1)


# Equations, switches and the paper's notation: docs/design.md, section 3.3.
def bellman_targets(q_target_current: torch.Tensor | None, q_target_next_first: torch.Tensor,
                    valid_mask: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor,
                    done: torch.Tensor, mc_return: torch.Tensor, *,
                    autoregressive: bool = True, bootstrap: bool = True,
                    mc_lower_bound: bool = True) -> torch.Tensor:
    """Targets [B, d] of every action dimension.

    Args:
        q_target_current: Q_target at s_t teacher-forced with the data's bins, [B, d, K]: row i
            is Q_target(s_t, a_t^{1:i-1}, a^i = .). Only rows 1..d-1 are used (None when
            ``autoregressive`` is False).
        q_target_next_first: Q_target(s_{t+n}, a^1 = .) [B, K].
        valid_mask: bool [d, K], the bins that exist in each dimension.
        reward: n-step discounted reward sum [B]; discount: gamma^n [B]; done: 1 if the episode
            ends within the n steps [B]; mc_return: discounted return-to-go [B].
    """
    b, k = q_target_next_first.shape
    d = valid_mask.shape[0]
    last = reward.clone()
    if bootstrap:
        last = last + discount * (1.0 - done) * masked_max(q_target_next_first, valid_mask[0])
    if autoregressive and d > 1:
        # Dimension i's target: the best bin of dimension i+1 at the same state (no reward,
        # no discount), given the data's bins of dimensions 1..i.
        inner = masked_max(q_target_current[:, 1:], valid_mask[1:])       # [B, d-1]
        targets = torch.cat([inner, last[:, None]], dim=1)
    else:
        targets = last[:, None].expand(b, d)
    if mc_lower_bound:
        targets = torch.maximum(targets, mc_return[:, None])
    return targets


def untaken_bins(action_bins: torch.Tensor, valid_mask: torch.Tensor, radius: float = 0.0
                 ) -> torch.Tensor:
    """Bool [B, d, K]: the valid bins the regularizer pulls down for each transition.

    Every valid bin but the data's, less those within ``radius`` of it, measured as a fraction
    of the dimension's range: |b - a| / (K_i - 1) <= radius, K_i the dimension's valid bins.
    A dimension with 2 bins (terminate) is never exempted by a radius below 1.
    """
    bins = torch.arange(valid_mask.shape[1], device=action_bins.device)
    offset = (bins - action_bins[..., None]).abs()                            # [B, d, K]
    untaken = valid_mask[None] & (offset != 0)
    if radius > 0:
        span = (valid_mask.sum(-1) - 1).clamp(min=1).to(torch.float32)        # [d]
        untaken &= offset.to(torch.float32) > radius * span[None, :, None]
    return untaken


# Sum (weight alpha per untaken bin) or mean (alpha/(K-1) per bin); bce or mse: docs/design.md 3.4.
def q_transformer_loss(q: torch.Tensor, action_bins: torch.Tensor, targets: torch.Tensor,
                       valid_mask: torch.Tensor, conservative_weight: float = 1.0,
                       q_min: float = 0.0, reduction: str = "mean", value_loss: str = "mse",
                       logits: torch.Tensor | None = None, q_max: float = 1.0,
                       radius: float = 0.0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, td_loss, conservative_loss), each a mean over batch and dimensions.

    Args:
        q: online Q values [B, d, K] (value space, not logits).
        action_bins: the data's bins [B, d]; targets: [B, d] (no gradient flows into them).
        valid_mask: bool [d, K]; q_min: the minimal return, where untaken bins are pulled.
        reduction: how a dimension's untaken bins are combined, "sum" or "mean". Either way
            the loss is a mean over batch and dimensions, so it does not grow with the batch.
        value_loss: "mse", 1/2 (Q - y)^2; or "bce", the binary cross-entropy between
            (Q - q_min) / (q_max - q_min) = sigmoid(logits) and (y - q_min) / (q_max - q_min),
            computed from ``logits`` (the head's outputs before the bounding sigmoid). Both are
            minimised by the same Q, so the fixed point is the same; bce's gradient on the
            logit is (Q - y) / (q_max - q_min) where mse's is damped by the sigmoid's slope.
        radius: untaken bins within this fraction of their dimension's range of the data's
            bin are left out of the regularizer (``untaken_bins``); 0 = every untaken bin.
    """
    if value_loss == "bce":
        if logits is None:
            raise ValueError("value_loss 'bce' needs the logits")
        scale = q_max - q_min
        y = ((targets.detach() - q_min) / scale).clamp(0.0, 1.0)
        taken_logits = logits.gather(2, action_bins[..., None])[..., 0]
        td = F.binary_cross_entropy_with_logits(taken_logits, y, reduction="none")
        floor = F.softplus(logits)                       # BCE toward 0, i.e. toward q_min
    else:
        q_taken = q.gather(2, action_bins[..., None])[..., 0]                # [B, d]
        td = 0.5 * (q_taken - targets.detach()).square()
        floor = 0.5 * (q - q_min).square()
    td_loss = td.mean()
    if conservative_weight > 0:
        untaken = untaken_bins(action_bins, valid_mask, radius)
        per_dim = (floor * untaken).sum(-1)
        if reduction == "mean":
            per_dim = per_dim / untaken.sum(-1).clamp(min=1)
        conservative_loss = per_dim.mean()
    else:
        conservative_loss = q.new_zeros(())
    return td_loss + conservative_weight * conservative_loss, td_loss, conservative_loss


class Learner:
    """Owns the online network, its target copy and the optimizer; ``update(batch)`` is one step.

    ``model`` is a ``QTransformer`` (or anything with the same call signature,
    ``valid_mask`` and ``cfg.q_min``). The batch is the dict of tensors of the training-batch
    contract (``BATCH_KEYS``). ``distributed``: the online forward/backward runs through
    ``DistributedDataParallel`` (the process group must be initialised, e.g. by torchrun), so
    gradients are averaged over ranks; the weights start equal to rank 0's.
    ``dimension_names`` name the per-dimension metrics (BC's ``accuracy_<name>``).
    """

    def __init__(self, model: nn.Module, config: LearnerConfig | None = None,
                 distributed: bool = False, dimension_names: list[str] | None = None):
        self.config = config or LearnerConfig()
        self.dimension_names = list(dimension_names or
                                    (f"dim{i}" for i in range(model.valid_mask.shape[0])))
        self.model = model
        self.device = next(model.parameters()).device
        self.online = model
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            # Wrapping broadcasts rank 0's weights, so the target copy below starts equal too.
            self.online = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.target = None
        if self.config.algo == "qt" and self.config.target_network:
            self.target = copy.deepcopy(model).eval()
            self.target.requires_grad_(False)
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.config.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.config.lr, betas=self.config.betas,
            # The fused kernel is several times faster than the per-tensor loop, CPU included.
            fused=True if self.device.type in ("cpu", "cuda") else None)
        self.step = 0

    # ---- the arithmetic

    @torch.no_grad()
    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bellman targets [B, d] of a batch, from the target network in eval mode."""
        cfg = self.config
        net = self.target if self.target is not None else self.model
        was_training = net.training
        net.eval()
        try:
            b = batch["action_bins"].shape[0]
            if cfg.autoregressive_targets:
                # One pass over current and next observations together (2B).
                q = net(_cat(batch["frames"], batch["next_frames"]),
                        torch.cat([batch["instruction_embedding"]] * 2),
                        _cat(batch["state"], batch["next_state"]),
                        torch.cat([batch["action_bins"]] * 2))
                q_current, q_next_first = q[:b], q[b:, 0]
            else:
                q_current = None
                q_next_first = net(batch["next_frames"], batch["instruction_embedding"],
                                   batch["next_state"], batch["action_bins"], num_dims=1)[:, 0]
        finally:
            net.train(was_training)
        return bellman_targets(q_current, q_next_first, self.model.valid_mask, batch["reward"],
                               batch["discount"], batch["done"], batch["mc_return"],
                               autoregressive=cfg.autoregressive_targets,
                               bootstrap=cfg.bootstrap, mc_lower_bound=cfg.mc_lower_bound)

    def compute_loss(self, batch: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss with gradient, detached metrics) for one batch; no parameter changes."""
        if self.config.algo == "bc":
            return self._bc_loss(batch)
        batch = self._to_device(batch)
        targets = self.targets(batch)
        cfg = self.model.cfg
        logits = None
        if self.config.value_loss == "bce":
            logits = self.online(batch["frames"], batch["instruction_embedding"], batch["state"],
                                 batch["action_bins"], bounded=False)
            q = self.model.bound_q(logits)
        else:
            q = self.online(batch["frames"], batch["instruction_embedding"], batch["state"],
                            batch["action_bins"])
        loss, td_loss, cons_loss = q_transformer_loss(
            q, batch["action_bins"], targets, self.model.valid_mask,
            self.config.conservative_weight, float(cfg.q_min), self.config.conservative_reduction,
            self.config.value_loss, logits, float(cfg.q_max), self.config.conservative_radius)
        q_detached = q.detach()
        q_taken = q_detached.gather(2, batch["action_bins"][..., None])[..., 0]
        untaken = untaken_bins(batch["action_bins"], self.model.valid_mask)
        metrics = {"loss": loss.detach(), "td_loss": td_loss.detach(),
                   "conservative_loss": cons_loss.detach(), "q_taken": q_taken.mean(),
                   "q_untaken": (q_detached * untaken).sum() / untaken.sum().clamp(min=1),
                   "target": targets.mean(),
                   "mc_bound_active": (batch["mc_return"][:, None] >= targets).float().mean()}
        return loss, metrics

    def _bc_loss(self, batch: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``compute_loss`` of ``algo="bc"``: cross-entropy of the data's bins over the
        teacher-forced logits, and the per-dimension accuracy on the batch."""
        batch = self._to_device(batch, BC_BATCH_KEYS)
        logits = self.online(batch["frames"], batch["instruction_embedding"], batch["state"],
                             batch["action_bins"], bounded=False)
        loss, cross_entropy, anchor, accuracy = behavior_cloning_loss(
            logits, batch["action_bins"], self.model.valid_mask)
        metrics = {"loss": loss.detach(), "cross_entropy": cross_entropy.detach(),
                   "logit_anchor": anchor.detach(), "accuracy": accuracy.mean()}
        metrics.update({f"accuracy_{name}": a for name, a in zip(self.dimension_names, accuracy,
                                                                  strict=True)})
        return loss, metrics

    # ---- one step

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One gradient step on a batch, then the Polyak update; returns float metrics."""
        self.model.train()
        if self.config.image_shift > 0:
            batch = self._shifted(batch)
        loss, metrics = self.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.config.grad_clip > 0:
            metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()
        self.update_target()
        self.step += 1
        return {k: float(v) for k, v in metrics.items()}

    @torch.no_grad()
    def update_target(self) -> None:
        """target <- (1 - tau) target + tau online."""
        if self.target is None:
            return
        target_params = list(self.target.parameters())
        online_params = list(self.model.parameters())
        if self.config.tau >= 1.0:
            torch._foreach_copy_(target_params, online_params)
        else:
            torch._foreach_lerp_(target_params, online_params, self.config.tau)

    def _shifted(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with its frames (and next frames, drawn apart) randomly shifted."""
        out = dict(batch)
        for k in ("frames", "next_frames"):
            if out.get(k) is not None:
                out[k] = random_shift(out[k].to(self.device, non_blocking=True),
                                      self.config.image_shift)
        return out

    def _to_device(self, batch: dict[str, torch.Tensor],
                   keys: tuple[str, ...] = BATCH_KEYS) -> dict[str, torch.Tensor]:
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"training batch lacks {missing}; expected keys {list(keys)}")
        out = {}
        for k in keys:
            v = batch[k]
            if v is None:                      # e.g. no frames for a state-only model
                out[k] = None
                continue
            if k in ("reward", "done", "discount", "mc_return", "instruction_embedding", "state",
                     "next_state"):
                v = v.float()
            elif k == "action_bins":
                v = v.long()
            out[k] = v.to(self.device, non_blocking=True)
        return out


def _cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None or b is None:
        return None
    return torch.cat([a, b])
