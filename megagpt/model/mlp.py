"""The position-wise MLP: h -> ffn (split over TP) -> GELU -> h."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megagpt.model.layers import LayerContext


class MLP(nn.Module):
    def __init__(self, ctx: LayerContext):
        super().__init__()
        cfg = ctx.model
        self.ctx = ctx
        self.fc1 = ctx.column_linear(cfg.hidden_size, cfg.ffn_size)
        self.fc2 = ctx.row_linear(cfg.ffn_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, sliced: bool = False) -> torch.Tensor:
        """x: (b, s, h), or with `sliced` this rank's (b, s/tp, h) of the sequence (and so the result)."""
        h = self.ctx.column(self.fc1, x, sliced)
        return self.ctx.row(self.fc2, F.gelu(h, approximate="tanh"), sliced)
