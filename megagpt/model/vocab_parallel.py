"""Per-token log-probabilities and entropy from vocabulary-parallel logits, on an explicit TP group.

megatron-core's vocab_parallel_cross_entropy reduces over its global TP group; the RLHF
roles each own a different group (megagpt.rlhf.layout), so this takes the group as an
argument. Every TP rank computes the same loss from the reduced sums, so the sums'
backward is the identity (megatron-core's reduce_from_tensor_model_parallel_region),
not another all-reduce (torch.distributed.nn's, which would scale gradients by tp).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def _sum(x: torch.Tensor, group: Optional[dist.ProcessGroup], tp: int) -> torch.Tensor:
    from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

    return reduce_from_tensor_model_parallel_region(x, group=group) if tp > 1 else x


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, group: Optional[dist.ProcessGroup],
                   vocab_size: int, with_entropy: bool = False):
    """log p(labels) (B, T) from this rank's slice (B, T, V/tp) of the padded vocabulary; with_entropy
    also returns the entropy (B, T) over the real vocabulary (no gradient: a metric)."""
    tp = dist.get_world_size(group) if group is not None else 1
    rank = dist.get_rank(group) if group is not None else 0
    logits = logits.float()
    part = logits.shape[-1]
    first = rank * part
    # the padding rows of the vocabulary are not tokens: they take no probability
    real = torch.arange(first, first + part, device=logits.device) < vocab_size
    logits = logits.masked_fill(~real, float("-inf"))
    peak = logits.detach().amax(dim=-1, keepdim=True)
    if tp > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    shifted = logits - peak  # (B, T, V/tp)
    exp = shifted.exp()
    normaliser = _sum(exp.sum(dim=-1), group, tp)  # (B, T)
    local = labels - first
    mine = (local >= 0) & (local < part)
    picked = shifted.gather(-1, local.clamp(0, part - 1).unsqueeze(-1)).squeeze(-1)
    picked = torch.where(mine, picked, torch.zeros_like(picked))
    logp = _sum(picked, group, tp) - normaliser.log()
    if not with_entropy:
        return logp
    with torch.no_grad():
        weighted = _sum((exp * shifted.masked_fill(~real, 0.0)).sum(dim=-1), group, tp)
        entropy = normaliser.log() - weighted / normaliser
    return logp, entropy
