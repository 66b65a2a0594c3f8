"""Keys and values of the tokens seen so far, per layer: each generated token then costs O(T), not O(T^2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class KVCache:
    keys: list[torch.Tensor]  # per layer: (B, nh, max_len, hs), this rank's heads
    values: list[torch.Tensor]
    length: int = 0  # columns filled; the next token's column
    # (B,) left padding of each row: prompts of different lengths decode as one batch. Row i's token in
    # column c sits at position c - pad[i], and its keys in columns < pad[i] are hidden from it.
    pad: Optional[torch.Tensor] = None

    @classmethod
    def empty(cls, num_layers: int, batch: int, heads: int, max_len: int, head_dim: int, dtype: torch.dtype,
              device: torch.device, pad: Optional[torch.Tensor] = None) -> "KVCache":
        shape = (batch, heads, max_len, head_dim)
        return cls([torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)],
                   [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)], pad=pad)

    def positions(self, columns: torch.Tensor) -> torch.Tensor:
        """Token positions of these columns: (T,) without padding, (B, T) with (a pad column counts as 0)."""
        if self.pad is None:
            return columns
        return (columns[None, :] - self.pad[:, None]).clamp(min=0)

    def visible(self, q_columns: torch.Tensor, k_columns: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """The (Tq, Tk) pattern mask `allowed`, less each row's padding keys: (B, 1, Tq, Tk) with padding.
        A padding query keeps its own key, so its (unused) output stays finite and cannot poison a sum."""
        if self.pad is None:
            return allowed
        real = k_columns[None, :] >= self.pad[:, None]  # (B, Tk)
        own = q_columns[:, None] == k_columns[None, :]  # (Tq, Tk)
        return (allowed[None] & (real[:, None, :] | own[None])).unsqueeze(1)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys and values after the cached ones; returns all of them so far."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
