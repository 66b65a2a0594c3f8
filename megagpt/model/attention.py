"""Causal self-attention over this rank's heads: dense, or GPT-3's locally banded form."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from megagpt.model.layers import LayerContext


def local_causal_attention(q, k, v, window: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention where query i sees keys i-window+1 .. i, in O(T * window).

    Queries are cut into blocks of `window`; block b needs only key blocks b-1 and b.
    Written out because FlexAttention has no CPU backward in torch 2.13.
    """
    b, h, t, d = q.shape
    n = -(-t // window)
    pad = n * window - t
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    q = q.view(b, h, n, window, d)
    k, v = (x.view(b, h, n, window, d) for x in (k, v))
    # keys of the previous block next to this block's: [b, h, n, 2*window, d]
    k, v = (torch.cat([F.pad(x, (0, 0, 0, 0, 1, 0))[:, :, :-1], x], dim=3) for x in (k, v))
    qi = torch.arange(window, device=q.device).view(window, 1)
    kj = torch.arange(2 * window, device=q.device).view(1, 2 * window)
    band = (kj > qi) & (kj <= qi + window)  # distance window+qi-kj in [0, window)
    first = band & (kj >= window)  # block 0 has no previous block
    mask = torch.stack([first] + [band] * (n - 1)).view(1, 1, n, window, 2 * window)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return out.reshape(b, h, n * window, d)[:, :, :t]


class Attention(nn.Module):
    def __init__(self, ctx: LayerContext, layer_index: int):
        super().__init__()
        cfg = ctx.model
        self.ctx = ctx
        self.local_heads = cfg.num_heads // ctx.tp_size
        self.head_dim = cfg.head_dim
        self.window = cfg.local_window if cfg.is_local_layer(layer_index) else None
        self.dropout_p = cfg.attention_dropout
        # qkv output features are laid out (head, q|k|v, head_dim) so a contiguous TP split keeps whole heads.
        self.qkv = ctx.column_linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.proj = ctx.row_linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv, _ = self.qkv(x)
        q, k, v = qkv.view(b, t, self.local_heads, 3, self.head_dim).permute(3, 0, 2, 1, 4).unbind(0)
        dropout_p = self.dropout_p if self.training else 0.0
        # This rank's heads are its own: their dropout must differ from the other TP ranks'.
        fork = self.ctx.rng.fork() if dropout_p > 0 and self.ctx.rng else contextlib.nullcontext()
        with fork:
            if self.window is not None and self.window < t:
                out = local_causal_attention(q, k, v, self.window, dropout_p)
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        out, _ = self.proj(out.transpose(1, 2).reshape(b, t, self.local_heads * self.head_dim))
        return out
