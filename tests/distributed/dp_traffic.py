"""Worker for test_planner_traffic: the bytes DeepSpeed hands to collectives in one training step, by kind, as
the planner's traffic model (megagpt.planner.timing.dp_collectives) counts them.

    python -m tests.distributed.workers tests.distributed.dp_traffic N OUT key=value ...

At tp = pp = 1 every collective is over DP. The step is the second (the first also has start-up's), of 2
micro-batches; collectives of a few elements (norms, flags) are left out, as the planner leaves them out.
"""

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from megagpt.model.gpt import lm_loss
from tests.distributed.workers import engine_for, report

SMALL = 1024  # bytes: scalars and flags


def _tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _tensors(item)]
    return []


class Traffic(TorchDispatchMode):
    """Bytes by kind of collective: what an all-reduce reduces, what an all-gather gathers (its output), what a
    reduce-scatter reduces (its input). c10d's ops go through the dispatcher, whichever API called them."""

    KINDS = {"allreduce_": ("all_reduce", 0), "allreduce_coalesced_": ("all_reduce", 0),
             "_allgather_base_": ("all_gather", 0), "allgather_": ("all_gather", 0),
             "allgather_into_tensor_coalesced_": ("all_gather", 0),
             "_reduce_scatter_base_": ("reduce_scatter", 1), "reduce_scatter_": ("reduce_scatter", 1),
             "reduce_scatter_tensor_coalesced_": ("reduce_scatter", 1),
             "broadcast_": ("broadcast", 0), "reduce_": ("reduce", 0)}

    def __init__(self):
        super().__init__()
        self.bytes: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "c10d":
            name = func._schema.name.split("::")[-1]
            kind, which = self.KINDS.get(name, (name, 0))
            size = sum(t.numel() * t.element_size() for t in _tensors(args[which]))
            if size > SMALL:
                self.bytes[kind] = self.bytes.get(kind, 0) + size
        return func(*args, **(kwargs or {}))


def main(out: str, overrides: list[str]) -> None:
    cfg, _, engine = engine_for(overrides, micro_batches=2)
    b = cfg.train.micro_batch_size
    gen = torch.Generator().manual_seed(dist.get_rank())
    batch = torch.randint(0, cfg.model.vocab_size, (b, cfg.model.seq_length + 1), generator=gen)
    tokens, labels = batch[:, :-1], (batch[:, 1:], torch.ones(b, cfg.model.seq_length))
    for step in range(2):
        with Traffic() as traffic:
            for micro in range(2):
                engine.set_gradient_accumulation_boundary(micro == 1)
                engine.backward(lm_loss(engine(tokens), labels))
            engine.step()
    parameters = sum(p.numel() for p in engine.module.parameters()) if cfg.parallel.zero_stage < 3 else \
        sum(p.ds_numel for p in engine.module.parameters())
    report(out, {"bytes": traffic.bytes, "parameters": parameters, "optimizer": type(engine.optimizer).__name__})
