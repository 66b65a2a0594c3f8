"""What a run will cost before it is queued: sizes, memory per rank, step time, and the search
over layouts that `megagpt plan` and `megagpt pretrain --dry-run` print.

    counts    parameters (whole model and per rank), training FLOPs per token
    memory    bytes per rank: weights, gradients and optimizer states as DeepSpeed holds them,
              activations (Korthikanti et al. 2022, adapted to this model)
    timing    step time and MFU from FLOPs and stated bandwidths
    search    candidate layouts of a config on N GPUs, ranked, with the reason each misfit fails
"""

from megagpt.planner.counts import (attention_span, build_rank_on_meta, parameter_count, rank_parameters,
                                    rank_tensors, stage_blocks, training_flops_per_token)

__all__ = ["attention_span", "build_rank_on_meta", "parameter_count", "rank_parameters", "rank_tensors",
           "stage_blocks", "training_flops_per_token"]
