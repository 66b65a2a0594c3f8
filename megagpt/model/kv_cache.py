"""Keys and values of the tokens seen so far, per layer: each generated token then costs O(T), not O(T^2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    keys: list[torch.Tensor]  # per layer: (B, nh, max_len, hs), this rank's heads
    values: list[torch.Tensor]
    length: int = 0  # positions filled; the next token's position

    @classmethod
    def empty(cls, num_layers: int, batch: int, heads: int, max_len: int, head_dim: int, dtype: torch.dtype,
              device: torch.device) -> "KVCache":
        shape = (batch, heads, max_len, head_dim)
        return cls([torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)],
                   [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)])

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys and values after the cached ones; returns all of them so far."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
