"""Behaviour cloning on the Q-Transformer's own network: the baseline of ``qt-ros train --algo bc``.

Same network, same data, same greedy decoder as the Q-learner. For each action dimension i the
head's per-bin outputs *before* the sigmoid that bounds Q (``model(..., bounded=False)``) are the
logits z_i of a categorical distribution over the bins of dimension i, given the data's bins of
dimensions 1..i-1 (teacher forcing: the very pass the Q-learner trains). With V_i the valid bins
of dimension i (terminate has 2 of 256):

    cross_entropy = mean over batch and dimensions of  -log softmax_{b in V_i}(z_i)[a_t^i]
    logit_anchor  = mean over batch and dimensions of  (logsumexp_{b in V_i} z_i)^2
    loss          = cross_entropy + LOGIT_ANCHOR_WEIGHT * logit_anchor

Acting needs no change: the sigmoid is increasing, so the bin ``Policy`` chooses,
argmax_b sigmoid(z_b), is argmax_b z_b, the most likely bin. That holds in float32 only below
z ~ 16.6, where sigmoid(z) rounds to 1.0 and bins would tie (the decoder then takes the lowest).
Cross-entropy is blind to a shift of all logits of a dimension, so nothing else keeps them
there; the anchor (PaLM's "z-loss") holds logsumexp near 0, hence every logit near its log
probability, <= 0, where the sigmoid orders bins like the logits. docs/design.md, section 3.9.
"""

from __future__ import annotations

import torch

# Small enough not to compete with the cross-entropy (PaLM uses 1e-4 on its softmax).
LOGIT_ANCHOR_WEIGHT = 1e-3


def behavior_cloning_loss(logits: torch.Tensor, action_bins: torch.Tensor,
                          valid_mask: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, cross_entropy, logit_anchor, accuracy per dimension [d]) of a batch.

    Args:
        logits: teacher-forced per-bin outputs before the sigmoid, [B, d, K].
        action_bins: the data's bins [B, d] (every one valid in its dimension).
        valid_mask: bool [d, K], the bins that exist in each dimension.

    ``accuracy[i]`` is the share of the batch whose most likely valid bin of dimension i, given
    the data's bins before it, is the data's bin.
    """
    masked = logits.masked_fill(~valid_mask, float("-inf"))                 # [B, d, K]
    log_z = masked.logsumexp(-1)                                            # [B, d]
    log_p_taken = masked.gather(2, action_bins[..., None])[..., 0] - log_z  # [B, d]
    cross_entropy = -log_p_taken.mean()
    logit_anchor = log_z.square().mean()
    loss = cross_entropy + LOGIT_ANCHOR_WEIGHT * logit_anchor
    accuracy = (masked.argmax(-1) == action_bins).float().mean(0)
    return loss, cross_entropy, logit_anchor, accuracy
