"""Layouts of a config on N GPUs: each one's memory and step time, ranked, the misfits explained.

A candidate is (tp, pp, dp, micro-batch, activation recompute, sequence parallelism, ZeRO stage)
with tp dividing the heads, the MLP width and the padded vocabulary and at most a node wide (and
the sequence, with sequence parallelism), pp dividing the layers, tp·pp·dp = N, the global batch a
whole number of micro-batches per replica, and ZeRO 2/3 only at pp = 1 (DeepSpeed's pipeline takes
ZeRO 1), and whatever else megagpt.config.validate asks of it (the batch ramp and the held-out
samples in whole micro-batches per replica, say): a layout listed is one `megagpt pretrain` takes.
A layout fits when
its fullest rank (megagpt.planner.memory) stays within the GPU's memory less a reserve for the
CUDA context, NCCL's buffers and allocator fragmentation. Offloading is not searched (it trades
step time for memory that the layouts above usually find elsewhere); a config's own offload
settings are honoured where it is planned as given (`megagpt pretrain --dry-run`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import asdict, dataclass

from megagpt.config import Config, ModelConfig, validate, validate_model_sizes
from megagpt.errors import ConfigError
from megagpt.planner.counts import parameter_count
from megagpt.planner.memory import Layout, RankMemory, rank_memory
from megagpt.planner.timing import Hardware, StepTime, mfu, step_time

GiB = 2**30
PART_NAMES = {"optimizer": "optimizer states", "buffers": "DeepSpeed's buffers"}  # RankMemory.parts, said in full
MICRO_BATCHES = (1, 2, 4, 8, 16)
RECOMPUTE = ("none", "selective", "full")


@dataclass
class Plan:
    layout: Layout
    memory: RankMemory
    time: StepTime
    mfu: float
    usable: int  # bytes a rank may fill

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.usable

    def why_not(self) -> str:
        """Which part exceeds memory and by how much ('' when it fits)."""
        if self.fits:
            return ""
        parts = self.memory.parts()
        largest = max(parts, key=parts.get)
        return (f"needs {gib(self.memory.total)} of {gib(self.usable)} GiB on pipeline stage {self.memory.stage}: "
                f"over by {gib(self.memory.total - self.usable)} GiB; {PART_NAMES.get(largest, largest)} take "
                f"{gib(parts[largest])} GiB")

    def to_dict(self) -> dict:
        return {"layout": asdict(self.layout), "fits": self.fits, "why_not": self.why_not(),
                "parameters_per_rank": self.memory.parameters, "stage": self.memory.stage,
                "bytes": {**self.memory.parts(), "total": self.memory.total,
                          "offloaded_to_cpu": self.memory.states.offloaded, "usable": self.usable},
                "bubble": self.time.bubble, "step_seconds": self.time.total, "mfu": self.mfu,
                "seconds": {"compute": self.time.compute, "tensor_parallel": self.time.tensor_parallel,
                            "pipeline": self.time.pipeline, "data_parallel": self.time.data_parallel}}


def gib(n: float) -> str:
    return f"{n / GiB:.1f}"


def count(n: float) -> str:
    """A parameter count at a scale that shows it: 174.60B, 1.316B, 12.3M, 466.4K (the demo's model was 0.000B)."""
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def check_request(cfg: Config, gpus: int, gpu_memory_gb: float, reserve_gb: float, hw: Hardware) -> None:
    """One-line errors for a request that makes no sense, before any planning."""
    if gpus < 1:
        raise ConfigError(f"--gpus {gpus}: plan for at least one GPU")
    for flag, value in [("--gpu-memory-gb", gpu_memory_gb), ("--reserve-gb", reserve_gb),
                        ("--gpu-tflops", hw.gpu_tflops), ("--intra-node-gbps", hw.intra_node_gbps),
                        ("--inter-node-gbps", hw.inter_node_gbps), ("--matmul-efficiency", hw.matmul_efficiency)]:
        if not math.isfinite(value):
            raise ConfigError(f"{flag} {value} must be a finite number")
    if gpu_memory_gb < 1:
        raise ConfigError(f"--gpu-memory-gb {gpu_memory_gb}: a GPU with less than 1 GB cannot hold a training rank")
    if not 0 <= reserve_gb < gpu_memory_gb:
        raise ConfigError(f"--reserve-gb {reserve_gb} must lie in [0, --gpu-memory-gb {gpu_memory_gb})")
    for flag, value in [("--gpu-tflops", hw.gpu_tflops), ("--intra-node-gbps", hw.intra_node_gbps),
                        ("--inter-node-gbps", hw.inter_node_gbps), ("--gpus-per-node", hw.gpus_per_node)]:
        if value <= 0:
            raise ConfigError(f"{flag} {value} must be positive")
    if not 0 < hw.matmul_efficiency <= 1:
        raise ConfigError(f"--matmul-efficiency {hw.matmul_efficiency} must lie in (0, 1]")


def evaluate(cfg: Config, layout: Layout, hw: Hardware, usable: int) -> Plan:
    m, t = cfg.model, cfg.train
    micro_batches = t.global_batch_size // (layout.dp * layout.micro_batch)
    memory = rank_memory(m, layout, t.precision, micro_batches)
    time = step_time(m, layout, t.precision, t.global_batch_size, hw)
    return Plan(layout, memory, time, mfu(m, layout, t.global_batch_size, time.total, hw), usable)


def tensor_parallel_sizes(m: ModelConfig, limit: int) -> list[int]:
    return [t for t in range(1, limit + 1)
            if m.num_heads % t == 0 and m.ffn_size % t == 0 and m.padded_vocab_size % t == 0]


def candidates(cfg: Config, gpus: int, hw: Hardware) -> tuple[list[Layout], dict[str, list]]:
    """(the layouts megagpt.config.validate takes, {a reason, its numbers blanked: [how many layouts it refused,
    one of its messages]})."""
    m = cfg.model
    found, refused = [], {}
    for tp in tensor_parallel_sizes(m, min(gpus, hw.gpus_per_node)):
        for pp in (p for p in range(1, m.num_layers + 1) if m.num_layers % p == 0 and gpus % (tp * p) == 0):
            dp = gpus // (tp * pp)
            for mb in MICRO_BATCHES:
                for zero in ((1, 2, 3) if pp == 1 else (1,)):
                    for sp in ((False, True) if tp > 1 and m.seq_length % tp == 0 else (False,)):
                        for recompute in RECOMPUTE:
                            layout = Layout(tp, pp, dp, mb, recompute, sp, zero,
                                            grad_reduce_in_fp32=cfg.parallel.grad_reduce_in_fp32)
                            try:
                                validate(with_layout(cfg, layout), gpus, check_data=False)
                            except ConfigError as exc:
                                kind = refused.setdefault(re.sub(r"\d+", "#", str(exc)), [0, str(exc)])
                                kind[0] += 1
                            else:
                                found.append(layout)
    return found, refused


def with_layout(cfg: Config, layout: Layout) -> Config:
    """The config as it would run at this layout (config_layout's inverse)."""
    p, t = cfg.parallel, cfg.train
    return dataclasses.replace(
        cfg, parallel=dataclasses.replace(p, tp=layout.tp, pp=layout.pp, zero_stage=layout.zero_stage,
                                          sequence_parallel=layout.sequence_parallel,
                                          offload_optimizer=layout.offload_optimizer,
                                          offload_params=layout.offload_params,
                                          grad_reduce_in_fp32=layout.grad_reduce_in_fp32),
        train=dataclasses.replace(t, micro_batch_size=layout.micro_batch, activation_checkpointing=layout.recompute))


def plan(cfg: Config, gpus: int, gpu_memory_gb: float, hw: Hardware, reserve_gb: float = 4.0) -> list[Plan]:
    """Every candidate, those that fit first (fastest first), then the rest (closest to fitting first)."""
    check_request(cfg, gpus, gpu_memory_gb, reserve_gb, hw)
    validate_model_sizes(cfg.model)  # before tensor_parallel_sizes divides by the padded vocab's multiple
    usable = int((gpu_memory_gb - reserve_gb) * GiB)
    layouts, refused = candidates(cfg, gpus, hw)
    plans = [evaluate(cfg, layout, hw, usable) for layout in layouts]
    if not plans:
        common = max(refused.values())[1] if refused else (
            f"tp must divide model.num_heads={cfg.model.num_heads}, the MLP width and the padded vocab, within a "
            f"node, and pp must divide model.num_layers={cfg.model.num_layers} and {gpus} GPUs with tp")
        raise ConfigError(f"no layout of {gpus} GPUs suits this config: {common}")
    return sorted(plans, key=lambda p: (not p.fits, p.time.total if p.fits else p.memory.total - p.usable,
                                        p.memory.total))


def config_layout(cfg: Config, gpus: int) -> Layout:
    """The layout a config asks for on `gpus` GPUs."""
    p, t = cfg.parallel, cfg.train
    return Layout(p.tp, p.pp, gpus // (p.tp * p.pp), t.micro_batch_size, t.activation_checkpointing,
                  p.sequence_parallel, p.zero_stage, offload_optimizer=p.offload_optimizer, offload_params=p.offload_params,
                  grad_reduce_in_fp32=p.grad_reduce_in_fp32)


HEADER = (f"{'layout':<46} {'params/rank':>12} {'weights':>8} {'grads':>7} {'optim':>7} {'activ':>7} {'buffers':>7}"
          f" {'total':>7} {'bubble':>7} {'step s':>8} {'MFU':>6}")


def row(p: Plan) -> str:
    parts = p.memory.parts()
    return (f"{p.layout.label():<46} {count(p.memory.parameters):>12} {gib(parts['weights']):>8} "
            f"{gib(parts['gradients']):>7} {gib(parts['optimizer']):>7} {gib(parts['activations']):>7} "
            f"{gib(parts['buffers']):>7} {gib(p.memory.total):>7} {p.time.bubble:>7.1%} {p.time.total:>8.2f} "
            f"{p.mfu:>6.1%}")


def render(cfg: Config, plans: list[Plan], gpus: int, hw: Hardware, top: int | None) -> str:
    """The table `megagpt plan` prints: the fitting layouts ranked, then the misfits and why."""
    fit = [p for p in plans if p.fits]
    misfit = [p for p in plans if not p.fits]
    shown_fit = fit if top is None else fit[:top]
    shown_misfit = misfit if top is None else misfit[:top]
    m = cfg.model
    total = parameter_count(m)
    size = f"{total / 1e9:.2f}B" if total >= 1e9 else count(total)
    lines = [f"{size} parameters, {m.num_layers} layers, hidden {m.hidden_size}, "
             f"seq {m.seq_length}, global batch {cfg.train.global_batch_size}, {cfg.train.precision}, on {gpus} GPUs "
             f"({hw.gpus_per_node} per node, {hw.gpu_tflops:g} TFLOP/s peak at {hw.matmul_efficiency:.0%} for matmuls, "
             f"{hw.intra_node_gbps:g}/{hw.inter_node_gbps:g} Gbit/s within/between nodes). Bytes in GiB per rank "
             f"(the fullest pipeline stage); {gib(plans[0].usable)} GiB usable.", ""]
    if cfg.train.precision == "fp32":
        lines.insert(1, "Note: train.precision=fp32, but --gpu-tflops is a bf16 peak unless given (H100: 67 TFLOP/s "
                        "fp32, 495 tf32); plan with train.precision=bf16 or pass the fp32 figure.")
    lines += [f"{len(fit)} layouts fit" + (f" (the fastest {len(shown_fit)} shown)" if len(shown_fit) < len(fit) else "")
              + ":", HEADER]
    lines += [f"{i + 1:>3}. " + row(p) for i, p in enumerate(shown_fit)] or ["     none"]
    lines += ["", f"{len(misfit)} do not fit" + (f" (the closest {len(shown_misfit)} shown; --all lists every one)"
                                                 if len(shown_misfit) < len(misfit) else "") + ":"]
    lines += [f"     {p.layout.label():<46} {p.why_not()}" for p in shown_misfit] or ["     none"]
    return "\n".join(lines)


def verdict(cfg: Config, gpus: int, gpu_memory_gb: float, hw: Hardware, reserve_gb: float = 4.0) -> tuple[Plan, str]:
    """The config's own layout planned, and a line saying whether it fits (and, if not, the best one that does)."""
    plans = plan(cfg, gpus, gpu_memory_gb, hw, reserve_gb)
    own = evaluate(cfg, config_layout(cfg, gpus), hw, plans[0].usable)
    if own.fits:
        unpriced = (" (not counting the offload's host transfers and CPU optimizer step, which this estimate "
                    "leaves out)" if own.layout.offload_optimizer or own.layout.offload_params else "")
        return own, (f"fits: {gib(own.memory.total)} of {gib(own.usable)} GiB usable per rank; estimated "
                     f"{own.time.total:.2f} s per step, MFU {own.mfu:.1%}{unpriced}")
    best = next((p for p in plans if p.fits), None)
    alternative = (f"the best layout that fits is {best.layout.label()} ({gib(best.memory.total)} GiB, "
                   f"{best.time.total:.2f} s per step, MFU {best.mfu:.1%})" if best else
                   f"no layout of {gpus} GPUs fits: more GPUs, or offloading (parallel.offload_optimizer)")
    return own, f"does not fit: {own.why_not()}; {alternative}"
