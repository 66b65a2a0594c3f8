"""Gradient handling DeepSpeed does with more memory traffic than its arithmetic needs, done without it.

On a GPU these element-wise passes over every parameter are memory-bound: each byte per parameter costs
about half a millisecond a step at gpt3-xl's 1.3B parameters on an H100 (1.3 GB at ~3 TB/s);
`benchmarks/optimizer_step.py` counts them. Each replacement computes what DeepSpeed computes: bitwise, but for
the reduction at dp >= 3 (below; tests/distributed/test_gradient_reduction.py).
"""

from __future__ import annotations

import torch.distributed as dist

from megagpt.parallel.topology import ParallelContext


def reduce_gradients_in_place(engine, pc: ParallelContext) -> None:
    """DeepSpeed's reduction over DP where it takes its generic path (BF16_Optimizer, ZeRO 0; ZeRO 1's and 2's own
    optimizers reduce their own way and are left alone), without its copies.

    DeepSpeed concatenates the gradients into a new buffer, reduces that and copies it back: 16 bytes per
    parameter and a transient copy of every gradient, though BF16_Optimizer's fp32 gradients are one flat buffer
    per group already. At dp = 1 it did all that, rounding the fp32 sums to its bf16 wire type and back, to reduce
    over one rank. Here BF16_Optimizer at dp = 1 reduces nothing, and its flat buffers are reduced where they lie,
    by the same operations (to the wire type, sum, divide by dp, back; with parallel.grad_reduce_in_fp32 the wire
    type is the buffers' own, and they are reduced as they are): bitwise DeepSpeed's at dp = 2; at dp >= 3
    the same mean, rounded in another order where DeepSpeed's 5e8-element bucket joined the two groups in one
    buffer (a ring all-reduce's order of additions depends on where an element sits). ZeRO 0's optimizers keep
    DeepSpeed's pass, which also gives a zero gradient to a parameter that got none (the last pipeline stage's
    unused position embeddings), as AdamW's weight decay expects."""
    fallback = engine.buffered_allreduce_fallback

    def reduce(grads=None, elements_per_buffer=None):
        if grads is not None or not hasattr(engine.optimizer, "get_grads_for_reduction"):
            sized = {} if elements_per_buffer is None else {"elements_per_buffer": elements_per_buffer}
            return fallback(grads=grads, **sized)
        if pc.dp == 1:
            return
        flats, _experts = engine.optimizer.get_grads_for_reduction()  # no expert layers in a GPT
        wire_type = engine.communication_data_type
        for flat in flats:
            wire = flat if flat.dtype == wire_type else flat.to(wire_type)
            dist.all_reduce(wire, group=pc.dp_group)
            wire.mul_(1.0 / pc.dp)
            if wire is not flat:
                flat.copy_(wire)

    engine.buffered_allreduce_fallback = reduce


def accumulate_without_a_copy(optimizer) -> None:
    """BF16_Optimizer adds each micro-batch's bf16 gradient to its fp32 sum through an fp32 copy of it
    (`hp.add_(lp.grad.to(fp32))`): 6 bytes per parameter per micro-batch, and a transient as large as the
    largest gradient. `add_` converts as it reads; the sum is the same, bitwise."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    if not isinstance(optimizer, BF16_Optimizer):
        return
    theirs = optimizer._update_hp_grad

    def update(lp, group_idx, param_idx, clear_lp_grads):
        if lp.grad is None or optimizer.autoep_folding_tp_group is not None:  # (expert layers: theirs)
            return theirs(lp, group_idx, param_idx, clear_lp_grads)
        hp = optimizer.fp32_groups_gradients[group_idx][param_idx]
        hp.add_(lp.grad.view(hp.shape))
        lp._hp_grad = hp
        optimizer.fp32_groups_has_gradients[group_idx][param_idx] = True
        if clear_lp_grads:
            lp.grad.zero_()

    optimizer._update_hp_grad = update


def zero_sums_once(optimizer) -> None:
    """BF16_Optimizer zeroes its fp32 sums as its step ends, and DeepSpeed's engine has it zero them again just
    after (`_take_model_step` calls its zero_grad): 4 bytes per parameter a step for nothing. The second call finds no gradient added
    since (BF16_Optimizer's own per-parameter flags say so) and leaves the zeros as they are."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    if not isinstance(optimizer, BF16_Optimizer):
        return
    theirs = optimizer.clear_hp_grads

    def clear():
        if any(any(group) for group in optimizer.fp32_groups_has_gradients):
            theirs()

    optimizer.clear_hp_grads = clear
