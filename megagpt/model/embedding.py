"""Token + learned position embeddings; the same vocab-parallel matrix is the output head."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megagpt.model.kv_cache import KVCache
from megagpt.model.layers import LayerContext


class Embedding(nn.Module):
    def __init__(self, ctx: LayerContext):
        super().__init__()
        cfg = ctx.model
        self.ctx = ctx
        self.dropout_p = cfg.hidden_dropout
        self.word_embeddings = ctx.vocab_embedding(cfg.padded_vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.seq_length, cfg.hidden_size)
        ctx.init_layer(self, "embedding", cfg.init_std, {"position_embeddings.weight": cfg.position_init_std})

    def forward(self, tokens: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        """With a KV cache, `tokens` continue the cached columns (and their positions skip its left padding)."""
        columns = torch.arange(tokens.shape[1], device=tokens.device)
        positions = columns if cache is None else cache.positions(columns + cache.length)  # (T,) or (B, T)
        x = self.word_embeddings(tokens) + self.position_embeddings(positions)
        x = F.dropout(x, self.dropout_p, self.training) if self.dropout_p else x
        if self.ctx.sequence_parallel and cache is None:
            from megagpt.parallel.sequence_parallel import scatter

            x = scatter(x, self.ctx.tp_group)  # the blocks hold this rank's slice of the sequence
        return x

    def logits(self, x: torch.Tensor, sliced: Optional[bool] = None) -> torch.Tensor:
        """Tied output head: this rank's slice of the vocabulary, [b, t, padded_vocab / tp]. `sliced`: x is
        this rank's slice of the sequence (default: under sequence parallelism)."""
        from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

        if self.ctx.sequence_parallel if sliced is None else sliced:
            from megagpt.parallel.sequence_parallel import gather

            x = gather(x, self.ctx.tp_group)
        else:
            x = copy_to_tensor_model_parallel_region(x, group=self.ctx.tp_group)
        return F.linear(x, self.word_embeddings.weight)


def head_forward(embedding: Embedding, x: torch.Tensor) -> torch.Tensor:
    return embedding.logits(x)
