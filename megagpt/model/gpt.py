"""The GPT as math: a flat sequence of layers, and its loss.

    embedding -> block 0 .. block L-1 -> [final norm] -> tied head (the embedding again)

With pp = 1 these layers form the `GPT` module (so ZeRO 2/3 stay available); with
pp > 1 megagpt.parallel.parallelize cuts the same sequence into pipeline stages.
Either way the loss is the cross entropy averaged over unmasked tokens of the micro-batch:
megatron-core's vocab-parallel one when tp > 1, torch's fused one at tp = 1.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megagpt.model.block import FinalNorm, TransformerBlock
from megagpt.model.embedding import Embedding
from megagpt.model.kv_cache import KVCache
from megagpt.model.layers import LayerContext


def lm_loss(logits: torch.Tensor, labels) -> torch.Tensor:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    labels, loss_mask = labels
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        # the whole vocabulary is here: torch's fused kernel makes one pass over the (B, T, V) logits
        # each way, where megatron-core's makes several fp32 ones (shift, exp, sum, softmax, grad)
        losses = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), reduction="none").view_as(labels)
    else:
        # megatron-core's vocab-parallel CE reduces over its global TP group, which
        # build_parallel_context made identical to the one our layers were given.
        losses = vocab_parallel_cross_entropy(logits.float(), labels)
    return (losses * loss_mask).sum() / loss_mask.sum().clamp(min=1.0)


class GPT(nn.Module):
    """The layer list as one module, for pp = 1."""

    def __init__(self, ctx: LayerContext):
        super().__init__()
        self.embedding = Embedding(ctx)
        self.blocks = nn.ModuleList(TransformerBlock(ctx, i) for i in range(ctx.model.num_layers))
        self.final_norm = FinalNorm(ctx) if ctx.model.norm_position == "pre" else nn.Identity()

    def forward(self, tokens: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        """Logits of this rank's vocabulary slice, (B, T, padded_vocab / tp). With a cache, `tokens`
        continue the cached ones (generation), and the cache then holds them too."""
        x = self.embedding(tokens, cache)
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += tokens.shape[1]
        return self.embedding.logits(self.final_norm(x), sliced=self.embedding.ctx.sequence_parallel and cache is None)


class ScalarGPT(GPT):
    """The GPT with its unembedding replaced by a scalar head: InstructGPT's reward model, and the
    PPO critic (its value function starts as the reward model).

    The head is a (hidden -> 1) linear layer, replicated on every TP rank (it is tiny).
    `forward` gives the scalar at every position, (..., T) for tokens (..., T): the critic
    reads values per token, the reward model the value at a sequence's final token.
    """

    def __init__(self, ctx: LayerContext):
        super().__init__(ctx)
        self.value_head = nn.Linear(ctx.model.hidden_size, 1)
        ctx.init_layer(self.value_head, "value_head", ctx.model.init_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        lead, t = tokens.shape[:-1], tokens.shape[-1]
        x = self.embedding(tokens.reshape(-1, t))
        for block in self.blocks:
            x = block(x)
        return self.value_head(self.final_norm(x)).squeeze(-1).reshape(*lead, t)


def at_positions(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """values (..., T) read at positions (...): a sequence's reward at its final token."""
    return values.gather(-1, positions.unsqueeze(-1)).squeeze(-1)
