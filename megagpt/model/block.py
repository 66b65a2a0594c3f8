"""A transformer block, pre-LN (GPT-2/3) or post-LN (GPT-1)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint, noop_context_fn as noop_context

from megagpt.model.attention import Attention
from megagpt.model.init import residual_std
from megagpt.model.kv_cache import KVCache
from megagpt.model.layers import LayerContext
from megagpt.model.mlp import MLP


class TransformerBlock(nn.Module):
    def __init__(self, ctx: LayerContext, layer_index: int):
        super().__init__()
        cfg = ctx.model
        self.pre_norm = cfg.norm_position == "pre"
        self.dropout_p = cfg.hidden_dropout
        self.rng = ctx.rng
        self.sequence_parallel = ctx.sequence_parallel
        self.recompute = False  # train.activation_checkpointing=full (megagpt.parallel.parallelize)
        self.ln1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.attn = Attention(ctx, layer_index)
        self.ln2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.mlp = MLP(ctx)
        out_std = residual_std(cfg.init_std, cfg.num_layers, cfg.scale_residual_init)
        ctx.init_layer(self, f"layer{layer_index}", cfg.init_std,
                       {"attn.proj.weight": out_std, "mlp.fc2.weight": out_std})

    def _drop(self, x: torch.Tensor, sliced: bool) -> torch.Tensor:
        if not self.dropout_p:
            return x
        if sliced and self.rng:  # each TP rank holds other tokens: their masks must differ
            with self.rng.fork():
                return F.dropout(x, self.dropout_p, self.training)
        return F.dropout(x, self.dropout_p, self.training)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        if self.recompute and cache is None and self.training and torch.is_grad_enabled():
            # keep only the block's input; rebuild its activations in the backward pass
            return checkpoint(self._forward, x, use_reentrant=False,
                              context_fn=self.rng.recompute_context if self.rng else noop_context)
        return self._forward(x, cache)

    def _forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        sliced = self.sequence_parallel and cache is None  # x is this rank's slice of the sequence
        if self.pre_norm:
            x = x + self._drop(self.attn(self.ln1(x), cache), sliced)
            return x + self._drop(self.mlp(self.ln2(x), sliced), sliced)
        x = self.ln1(x + self._drop(self.attn(x, cache), sliced))
        return self.ln2(x + self._drop(self.mlp(x, sliced), sliced))


class FinalNorm(nn.Module):
    """The extra LayerNorm GPT-2 added after the last pre-LN block."""

    def __init__(self, ctx: LayerContext):
        super().__init__()
        self.norm = nn.LayerNorm(ctx.model.hidden_size, eps=ctx.model.layernorm_epsilon)
        ctx.init_layer(self, "final_norm", ctx.model.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)
