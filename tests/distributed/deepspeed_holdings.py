"""Worker for test_planner_memory: build a DeepSpeed engine as `megagpt pretrain` does, train, and
write per rank the bytes of every tensor the engine holds, by kind, as JSON.

    python -m tests.distributed.workers tests.distributed.deepspeed_holdings N OUT key=value ...

Gradients are read between two micro-batches of a step (what accumulates), weights and optimizer
states after a step. Storages are counted once, whatever views share them.
"""

import torch

from megagpt.model.gpt import lm_loss
from tests.distributed.workers import engine_for, report

SCALAR = 16  # bytes: step counters' and norms' scalars the planner leaves out are smaller


def held(engine) -> dict:
    seen: dict[int, tuple[str, int]] = {}

    def add(tensor, kind: str) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.numel() == 0:
            return
        storage = tensor.untyped_storage()
        if storage.data_ptr() and storage.data_ptr() not in seen:
            seen[storage.data_ptr()] = (kind, storage.nbytes())

    opt = engine.optimizer
    inner = opt if isinstance(opt, torch.optim.Optimizer) else opt.optimizer  # ZeRO 0 fp32: the AdamW itself
    for state in inner.state.values():  # first: Adam's tensors are the optimizer's, whatever else points at them
        for value in state.values():
            add(value, "optimizer")
    for p in engine.module.parameters():
        add(p, "weights")
        add(getattr(p, "ds_tensor", None), "weights")
        add(p.grad, "gradients")
        add(getattr(p, "grad_accum", None), "gradients")  # DeepSpeed's fp32 sums beside a bf16 .grad (ZeRO 1)

    def walk(obj, kind: str, depth: int = 0) -> None:
        if isinstance(obj, torch.Tensor):
            add(obj, kind)
            add(obj.grad, "gradients")  # (ZeRO 3 offloaded: its fp32 partition's gradient, kept through the step)
        elif isinstance(obj, (list, tuple)) and depth < 4:
            for x in obj:
                walk(x, kind, depth + 1)
        elif isinstance(obj, dict) and depth < 4:
            for x in obj.values():
                walk(x, kind, depth + 1)

    for name, value in vars(opt).items():
        if name != "optimizer" and opt is not inner:
            walk(value, "gradients" if "grad" in name else "weights")
    for bucket in getattr(opt, "ipg_buckets", {}).values():  # DeepSpeed's gradient buckets: a tensor, or a list
        walk(bucket.buffer, "gradients")
    totals = {"weights": 0, "gradients": 0, "optimizer": 0}
    for kind, nbytes in seen.values():
        if nbytes > SCALAR:
            totals[kind] += nbytes
    return totals


def main(out: str, overrides: list[str]) -> None:
    cfg, pc, engine = engine_for(overrides, micro_batches=2)
    b = cfg.train.micro_batch_size
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, cfg.model.vocab_size, (b, cfg.model.seq_length + 1), generator=gen)
    tokens, labels = batch[:, :-1], (batch[:, 1:], torch.ones(b, cfg.model.seq_length))
    record = {}
    for step in range(2):
        for micro in range(2):
            engine.set_gradient_accumulation_boundary(micro == 1)
            engine.backward(lm_loss(engine(tokens), labels))
            if step == 1 and micro == 0:
                record["gradients"] = held(engine)["gradients"]
            engine.step()
    after = held(engine)
    record.update(weights=after["weights"], optimizer=after["optimizer"], dp_rank=pc.dp_rank, tp_rank=pc.tp_rank)
    report(out, record)
