"""Causal self-attention over this rank's heads: dense, or one of GPT-3's sparse patterns."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megagpt.model.kv_cache import KVCache
from megagpt.model.layers import LayerContext
from megagpt.model.sparse_attention import attention_mask, sparse_attention


class Attention(nn.Module):
    def __init__(self, ctx: LayerContext, layer_index: int):
        super().__init__()
        cfg = ctx.model
        self.ctx = ctx
        self.layer_index = layer_index
        self.local_heads = cfg.num_heads // ctx.tp_size
        self.head_dim = cfg.head_dim
        self.window = cfg.local_window if cfg.is_local_layer(layer_index) else None
        self.pattern = cfg.sparse_pattern
        self.dropout_p = cfg.attention_dropout
        self.recompute_core = False  # train.activation_checkpointing=selective (megagpt.parallel.parallelize)
        # qkv output features are laid out (head, q|k|v, head_dim) so a contiguous TP split keeps whole heads.
        self.qkv = ctx.column_linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.proj = ctx.row_linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        """x: (b, t, h); in training with sequence parallelism this rank's (b, t/tp, h), and so the result."""
        sliced = self.ctx.sequence_parallel and cache is None
        qkv = self.ctx.column(self.qkv, x, sliced)
        b, t, _ = qkv.shape
        q, k, v = qkv.view(b, t, self.local_heads, 3, self.head_dim).permute(3, 0, 2, 1, 4).unbind(0)  # (B, nh, T, hs)
        if cache is not None:
            out = self._decode(q, k, v, cache)  # (B, nh, T, hs)
            return self.ctx.row(self.proj, out.transpose(1, 2).reshape(b, t, self.local_heads * self.head_dim), False)
        dropout_p = self.dropout_p if self.training else 0.0
        # This rank's heads are its own: their dropout must differ from the other TP ranks'.
        fork = self.ctx.rng.fork() if dropout_p > 0 and self.ctx.rng else contextlib.nullcontext()
        with fork:
            if self.recompute_core and self.training and torch.is_grad_enabled():
                # Megatron's selective recompute: the core's (B, nh, T, T) intermediates are the largest
                # activations and the cheapest to redo; the checkpoint replays the forked generator itself.
                out = checkpoint(self._core, q, k, v, dropout_p, use_reentrant=False)
            else:
                out = self._core(q, k, v, dropout_p)  # (B, nh, T, hs)
        return self.ctx.row(self.proj, out.transpose(1, 2).reshape(b, t, self.local_heads * self.head_dim), sliced)

    def _core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
        """softmax(q k^T / sqrt(hs)) v over the causal pattern, with attention dropout: (B, nh, T, hs)."""
        # A sparse layer whose window covers the sequence sees every earlier token: it is dense.
        if self.window is not None and self.window < q.shape[2]:
            return sparse_attention(q, k, v, self.pattern, self.window, dropout_p)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)

    def _decode(self, q, k, v, cache: KVCache) -> torch.Tensor:
        """The new tokens' queries against every cached key they may see (inference: no dropout)."""
        k, v = cache.update(self.layer_index, k, v)  # (B, nh, T_cached + T, hs)
        q_columns = torch.arange(cache.length, cache.length + q.shape[2], device=q.device)
        k_columns = torch.arange(k.shape[2], device=q.device)
        # distances between columns are distances between positions: padding shifts a whole row alike
        allowed = attention_mask(q_columns, k_columns, self.pattern if self.window else None, self.window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=cache.visible(q_columns, k_columns, allowed))
