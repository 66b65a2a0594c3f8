"""The DP x PP x TP rank grid and its process groups.

megatron-core's parallel_state (order tp-dp-pp: TP fastest) makes the tensor-parallel
groups our layers use; DeepSpeed's PipeModelDataParallelTopology (axes pipe, data,
model: model fastest) places pipeline stages and data replicas. The two must give the
same grid, or TP shards would meet the wrong pipeline neighbours; `ParallelContext`
asserts that they do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from megagpt.parallel.distributed import group_timeout


@dataclass
class ParallelContext:
    tp: int
    pp: int
    dp: int
    rank: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    tp_group: dist.ProcessGroup
    dp_group: dist.ProcessGroup
    topology: object  # deepspeed PipeModelDataParallelTopology
    device: torch.device


def build_parallel_context(tp: int, pp: int, device: torch.device) -> ParallelContext:
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
    from megatron.core import parallel_state as ps

    world = dist.get_world_size()
    dp = world // (tp * pp)
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    # No gloo twins of the groups: nothing here uses them, and on a multi-node CUDA cluster gloo resolving the
    # host name to an unroutable interface failed or hung the start-up.
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                 distributed_timeout_minutes=group_timeout().total_seconds() / 60,
                                 create_gloo_process_groups=False)
    topology = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    rank = dist.get_rank()
    coord = topology.get_coord(rank)
    ctx = ParallelContext(
        tp=tp, pp=pp, dp=dp, rank=rank,
        tp_rank=ps.get_tensor_model_parallel_rank(), pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        tp_group=ps.get_tensor_model_parallel_group(), dp_group=ps.get_data_parallel_group(),
        topology=topology, device=device,
    )
    assert_same_grid(ctx, coord, ps)
    return ctx


def assert_same_grid(ctx: ParallelContext, coord, ps) -> None:
    mine = (ctx.pp_rank, ctx.dp_rank, ctx.tp_rank)
    theirs = (coord.pipe, coord.data, coord.model)
    groups = {
        "model": dist.get_process_group_ranks(ctx.tp_group),
        "data": dist.get_process_group_ranks(ctx.dp_group),
        "pipe": dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group()),
    }
    for axis, ranks in groups.items():
        expected = next(g for g in ctx.topology.get_axis_comm_lists(axis) if ctx.rank in g) if len(ranks) > 1 else ranks
        if sorted(ranks) != sorted(expected):
            raise RuntimeError(f"rank {ctx.rank}: megatron-core {axis} group {ranks} != DeepSpeed's {expected}")
    if mine != theirs:
        raise RuntimeError(f"rank {ctx.rank}: megatron-core (pp,dp,tp)={mine} != DeepSpeed's {theirs}")
