"""Sequence parallelism (Korthikanti et al. 2022): between the tensor-parallel matmuls, each TP rank
keeps only its slice of the sequence, so LayerNorm, dropout and the residual stream cost 1/tp.

    embedding ─ scatter ─► [LN ─ gather·qkv ─ attention ─ proj·reduce-scatter ─ dropout ─ +] ... ─ LN ─ gather ─► head
                            on (b, s/tp, h)                                                        on (b, s/tp, h)

Written here rather than taken from megatron-core: its sequence-parallel mappings and linear
layer allocate their buffers with torch.cuda.current_device(), so they cannot run on CPU, where
our equivalence tests run. Activations are batch-first, (b, s, h): the sequence is dim 1. The
column-parallel matmul gathers its input inside its own autograd function and keeps only the
slice for the backward (gathering again there), which is where the memory goes down.

Parameters applied to a slice (the LayerNorms, the row-parallel biases) see only their rank's
tokens: `apply_sequence_parallel` (megagpt.parallel.parallelize) sums their gradients over TP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

SEQ = 1  # the sequence dimension of (b, s, h)


def _slice(x: torch.Tensor, group) -> torch.Tensor:
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    return x.chunk(size, dim=SEQ)[rank].contiguous()


def _all_gather(x: torch.Tensor, group) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=SEQ)


def _reduce_scatter(x: torch.Tensor, group) -> torch.Tensor:
    chunks = [c.contiguous() for c in x.chunk(dist.get_world_size(group), dim=SEQ)]
    out = torch.empty_like(chunks[0])
    dist.reduce_scatter(out, chunks, group=group)
    return out


class _Scatter(torch.autograd.Function):
    """Forward: this rank's slice of a replicated tensor. Backward: the slices' gradients gathered."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _slice(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.group), None


class _Gather(torch.autograd.Function):
    """Forward: the whole sequence from the slices. Backward: the gradient, which each rank holds for its
    own part of the vocabulary (a partial sum), summed and sliced."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter(grad, ctx.group), None


class _GatherLinear(torch.autograd.Function):
    """gather(x) @ weightᵀ + bias keeping only x's slice for the backward (column-parallel weight)."""

    @staticmethod
    def forward(ctx, x, weight, bias, group):
        ctx.save_for_backward(x, weight)
        ctx.group, ctx.has_bias = group, bias is not None
        return F.linear(_all_gather(x, group), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        full = _all_gather(x, ctx.group)
        grad_x = _reduce_scatter(grad @ weight, ctx.group)
        grad_weight = grad.reshape(-1, grad.shape[-1]).t() @ full.reshape(-1, full.shape[-1])
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None
        return grad_x, grad_weight, grad_bias, None


def scatter(x: torch.Tensor, group) -> torch.Tensor:
    return _Scatter.apply(x, group)


def gather(x: torch.Tensor, group) -> torch.Tensor:
    return _Gather.apply(x, group)


def column_linear(layer, x: torch.Tensor, group) -> torch.Tensor:
    """A megatron-core ColumnParallelLinear applied to a sequence slice: (b, s/tp, h) -> (b, s, out/tp)."""
    return _GatherLinear.apply(x, layer.weight, layer.bias, group)


def row_linear(layer, x: torch.Tensor, group) -> torch.Tensor:
    """A megatron-core RowParallelLinear whose sum over TP lands sliced: (b, s, in/tp) -> (b, s/tp, out)."""
    return _ReduceScatter.apply(F.linear(x, layer.weight), group) + layer.bias


class _ReduceScatter(torch.autograd.Function):
    """Forward: the TP ranks' partial sums added, each rank keeping its slice. Backward: gathered."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.group), None


def sum_gradient_over(group):
    """A parameter hook: the gradient summed over the TP ranks, for a parameter applied to a sequence slice."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, group=group)
        return grad

    return hook
