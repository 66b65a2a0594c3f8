"""Layout-independent initialisation.

Each weight is drawn in full from a generator seeded by (base seed, layer, parameter
name), then this rank keeps its tensor-parallel shard. The same config therefore
builds the same model at every (tp, pp, dp), which the equivalence tests rely on.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable

import torch

Init = Callable[[torch.Size, torch.Generator], torch.Tensor]


def param_seed(base_seed: int, layer: str, name: str) -> int:
    digest = hashlib.sha256(f"{base_seed}/{layer}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def normal(std: float) -> Init:
    return lambda shape, gen: torch.randn(shape, generator=gen) * std


def constant(value: float) -> Init:
    return lambda shape, gen: torch.full(shape, value)


def fill_shard(param: torch.nn.Parameter, init: Init, *, seed: int, layer: str, name: str,
               tp_rank: int, tp_size: int) -> None:
    """Fill `param` with its shard of the full tensor `init` draws for (seed, layer, name)."""
    full_shape = list(param.shape)
    sharded = getattr(param, "tensor_model_parallel", False)
    if sharded:
        full_shape[param.partition_dim] *= tp_size
    gen = torch.Generator().manual_seed(param_seed(seed, layer, name))
    full = init(torch.Size(full_shape), gen)
    if sharded:
        full = full.chunk(tp_size, dim=param.partition_dim)[tp_rank]
    with torch.no_grad():
        param.copy_(full.to(param.dtype))


def residual_std(std: float, num_layers: int, scaled: bool) -> float:
    return std / math.sqrt(2 * num_layers) if scaled else std
