"""Worker for test_gradient_reduction: megagpt's gradient passes (megagpt.parallel.gradients) against DeepSpeed's
own, each from the same inputs: two micro-batches summed into BF16_Optimizer's fp32 buffers, then the DP reduction;
then a whole step, which zeroes the sums once.

    python -m tests.distributed.workers tests.distributed.gradient_reduction N OUT key=value ...

Each rank sums its own tokens, so the ranks' gradients differ; rank r writes OUT/rank{r}.json.
"""

import types

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from megagpt.model.gpt import lm_loss
from tests.distributed.workers import engine_for, report


class ZeroCount(TorchDispatchMode):
    def __enter__(self):
        self.count = 0
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten.zero_.default
        return func(*args, **(kwargs or {}))


def main(out: str, overrides: list[str]) -> None:
    cfg, pc, engine = engine_for(overrides, micro_batches=1)
    b = cfg.train.micro_batch_size
    gen = torch.Generator().manual_seed(dist.get_rank())
    # two micro-batches: their fp32 sum is no longer a bf16 number
    batches = [torch.randint(0, cfg.model.vocab_size, (b, cfg.model.seq_length + 1), generator=gen) for _ in range(2)]

    def accumulate():
        for batch in batches:
            engine.set_gradient_accumulation_boundary(False)  # DeepSpeed reduces at the boundary only: nothing yet
            engine.backward(lm_loss(engine(batch[:, :-1]), (batch[:, 1:], torch.ones(b, cfg.model.seq_length))))

    optimizer = engine.optimizer
    accumulate()  # megagpt's accumulation (megagpt.parallel.gradients.accumulate_without_a_copy)
    summed = [f.clone() for f in optimizer.get_grads_for_reduction()[0]]
    optimizer.clear_hp_grads()
    optimizer._update_hp_grad = types.MethodType(type(optimizer)._update_hp_grad, optimizer)
    accumulate()  # DeepSpeed's, from the same weights and tokens
    accumulated_alike = all(torch.equal(a, f) for a, f in zip(summed, optimizer.get_grads_for_reduction()[0]))

    flats = engine.optimizer.get_grads_for_reduction()[0]
    local = [f.clone() for f in flats]
    engine.buffered_allreduce_fallback()  # megagpt's
    ours = [f.clone() for f in flats]
    for flat, grad in zip(flats, local):
        flat.copy_(grad)
    type(engine).buffered_allreduce_fallback(engine)  # DeepSpeed's, on the same gradients
    record = {"optimizer": type(engine.optimizer).__name__, "dtype": str(flats[0].dtype),
              "accumulated_alike": accumulated_alike,
              "ours_equal_deepspeed": all(torch.equal(a, f) for a, f in zip(ours, flats)),
              "ours_unchanged": all(torch.equal(a, g) for a, g in zip(ours, local)),
              "deepspeed_unchanged": all(torch.equal(f, g) for f, g in zip(flats, local))}
    engine.set_gradient_accumulation_boundary(True)  # a whole step: its sums are zeroed once (zero_sums_once)
    engine.backward(lm_loss(engine(batches[0][:, :-1]), (batches[0][:, 1:], torch.ones(b, cfg.model.seq_length))))
    with ZeroCount() as zeroes:
        engine.step()
    record["step_zeroes_sums"] = zeroes.count == len(flats) and all(not f.any() for f in flats)
    report(out, record)
