"""The step's parameter-sized work: megagpt's DeepSpeed step (ZeRO 0, 1, 2) against a plain clip + fused AdamW.

    python benchmarks/optimizer_step.py [--device cpu|cuda] [--config PATH] [--zero 0 1 2] [--micro-batches N]
                                        [key=value ...]
    python benchmarks/optimizer_step.py --device cuda --config configs/model/gpt3-xl.yaml train.precision=bf16

Each system trains the same model at (1,1,1) on --micro-batches micro-batches (default 1) of one 8-token
sequence, so the forward and backward are small and a step's time is its work per parameter: gradient
copies, sums over micro-batches and reduction, the norm, clipping, AdamW, the bf16 copy back. Some of that
work is per micro-batch (4 of them in pretrain_throughput's gpt3-xl step). Three numbers per row:
  - ms per step, the median after warm-up (on the device given);
  - ops per step that do work (views left out): on a GPU each launches at least one kernel, a few
    microseconds of CPU time apiece, which a step made of many small ops cannot hide;
  - bytes per parameter that the step's element-wise ops read and write (matmuls, views and the fused
    AdamW kernel left out: every row runs that kernel on fp32 weights and states alike, 16 B per
    parameter as counted here), counted over one step by a TorchDispatchMode. They do not depend on
    the device, and on a GPU these ops are memory-bound, so the bytes predict the time there from a
    CPU run.
The plain loop keeps fp32 weights (bf16 autocast when train.precision is bf16), as benchmarks/pretrain_throughput.py.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from megagpt.config import load_config  # noqa: E402

SEQ = 8
# Left out of the bytes: matmuls are compute-bound, and the fused AdamW kernel moves the same bytes in
# every row (fp32 weights, gradients and both moments, whatever the precision), so it would not tell them apart.
MATMULS = {"mm", "addmm", "bmm", "baddbmm", "_fused_adamw_"}


class ByteCount(TorchDispatchMode):
    """Bytes of every tensor an op reads or writes (each tensor once per op), by op; views move nothing."""

    def __init__(self):
        super().__init__()
        self.bytes = collections.Counter()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func.overloadpacket.__name__ in ("empty", "empty_strided", "empty_like", "detach"):
            return out
        self.calls += 1
        tensors = {id(t): t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)}
        self.bytes[func.overloadpacket.__name__] += sum(t.numel() * t.element_size() for t in tensors.values())
        return out


def megagpt_system(cfg):
    """(step function, parameter count, engine) of the DeepSpeed engine megagpt trains with."""
    from megagpt.model.gpt import lm_loss
    from megagpt.parallel.parallelize import parallelize
    from megagpt.parallel.topology import build_parallel_context

    pc = build_parallel_context(1, 1, torch.device(cfg.run.device))
    engine, _ = parallelize(cfg, pc, cfg.train.global_batch_size)
    tokens, labels = batch(cfg)

    def step():
        for i in range(cfg.train.global_batch_size):
            engine.set_gradient_accumulation_boundary(i == cfg.train.global_batch_size - 1)
            engine.backward(lm_loss(engine(tokens), labels))
            engine.step()

    return step, sum(p.numel() for p in engine.module.parameters()), engine


def plain_system(cfg):
    from megagpt.model.gpt import GPT
    from megagpt.model.layers import LayerContext
    from megagpt.train.optimizer import adamw
    from pretrain_throughput import PlainGPT

    model = PlainGPT(cfg.model)
    reference = GPT(LayerContext(model=cfg.model, seed=cfg.train.seed, tp_group=None))
    model.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.endswith("_extra_state")})
    del reference
    model.to(cfg.run.device)
    opt = adamw(model, cfg.optim)
    autocast = torch.autocast(cfg.run.device, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")
    tokens, (labels, mask) = batch(cfg)

    def step():
        for _ in range(cfg.train.global_batch_size):
            with autocast:
                logits = model(tokens)
            losses = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
            ((losses * mask.flatten()).sum() / mask.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters()), (model, opt)


def batch(cfg):
    g = torch.Generator().manual_seed(0)
    shape = (cfg.train.micro_batch_size, SEQ)
    tokens = torch.randint(0, cfg.model.vocab_size, shape, generator=g).to(cfg.run.device)
    labels = torch.randint(0, cfg.model.vocab_size, shape, generator=g).to(cfg.run.device)
    return tokens, (labels, torch.ones(shape, device=cfg.run.device))


def measure(step, device: str, steps: int) -> tuple[float, ByteCount]:
    """(median ms per step after two warm-up steps, the ops and bytes of one more step)."""
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    counter = ByteCount()
    with counter:
        step()
    return statistics.median(times[2:]) * 1e3, counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "bench", "cpu-small.yaml"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--zero", type=int, nargs="+", default=[0, 1, 2], choices=(0, 1, 2),
                        help="megagpt's ZeRO stages to compare (ZeRO 3 partitions the parameters it counts)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--micro-batches", type=int, default=1, help="per step, their gradients summed")
    parser.add_argument("--top", type=int, default=6, help="ops listed per row, by bytes")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.steps < 1:  # the median is over --steps after the warm-up
        parser.error(f"--steps {args.steps}: at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    from megagpt.parallel.distributed import init_distributed

    init_distributed(args.device)
    shape = ["train.batch_ramp_start=null", "train.micro_batch_size=1",
             f"train.global_batch_size={args.micro_batches}", f"run.device={args.device}"]
    rows = []
    for zero in args.zero:
        cfg = load_config(args.config, [*args.overrides, *shape, f"parallel.zero_stage={zero}"])
        step, params, keep = megagpt_system(cfg)
        rows.append((f"megagpt ZeRO {zero}", params, *measure(step, args.device, args.steps)))
        del step, keep
        if args.device == "cuda":
            torch.cuda.empty_cache()
    cfg = load_config(args.config, [*args.overrides, *shape])
    step, params, keep = plain_system(cfg)
    rows.append(("plain (clip + fused AdamW)", params, *measure(step, args.device, args.steps)))

    print(f"\nconfig {os.path.relpath(args.config, REPO)}, precision {cfg.train.precision}, device {args.device}, "
          f"{params / 1e6:.1f}M parameters, {args.micro_batches} micro-batch(es) of {SEQ} tokens a step")
    print(f"{'system':<28}{'ms/step':>10}{'ops/step':>10}{'bytes/param':>13}   largest ops (bytes/param)")
    for name, n, ms, counts in rows:
        traffic = {op: b for op, b in counts.bytes.items() if op not in MATMULS}
        top = ", ".join(f"{op} {b / n:.1f}" for op, b in collections.Counter(traffic).most_common(args.top))
        print(f"{name:<28}{ms:>10.1f}{counts.calls:>10}{sum(traffic.values()) / n:>13.1f}   {top}")


if __name__ == "__main__":
    main()
