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
        self.fc1 = ctx.column_linear(cfg.hidden_size, cfg.ffn_size)
        self.fc2 = ctx.row_linear(cfg.ffn_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.fc1(x)
        out, _ = self.fc2(F.gelu(h, approximate="tanh"))
        return out
