"""`megagpt pretrain --dry-run`: the config's model built for its layout on the meta device, one
rank per pipeline stage, so even gpt3-175b is counted without allocating a weight; then the
planner's bytes per rank and its verdict."""

from __future__ import annotations

from megagpt.config import Config
from megagpt.planner.counts import build_rank_on_meta, rank_parameters, rank_tensors, stage_blocks
from megagpt.planner.memory import RankMemory, activations, model_states
from megagpt.planner.search import config_layout, count, gib, verdict
from megagpt.planner.timing import Hardware


def built_parameters(cfg: Config, stage: int) -> int:
    """Parameters of tensor-parallel rank 0 of `stage`, counted on the model built on the meta device.
    Needs a torch.distributed world (of any size) for megatron-core's layers to read their group."""
    modules = build_rank_on_meta(cfg.model, cfg.parallel.tp, cfg.parallel.pp, stage)
    return sum(p.numel() for module in modules for p in module.parameters())


def dry_run(cfg: Config, gpus: int, gpu_memory_gb: float, hw: Hardware, reserve_gb: float = 4.0) -> str:
    m, layout, precision = cfg.model, config_layout(cfg, gpus), cfg.train.precision
    micro_batches = cfg.train.global_batch_size // (layout.dp * layout.micro_batch)
    lines = [f"megagpt pretrain --dry-run: {layout.label()} on {gpus} GPUs, {precision}, {micro_batches} "
             f"micro-batches per step; GiB per rank",
             f"{'stage':>5} {'blocks':>9} {'params (built)':>15} {'weights':>8} {'grads':>7} {'optim':>7} "
             f"{'activ':>7} {'buffers':>7} {'total':>7} {'on CPU':>7}"]
    for stage in range(layout.pp):
        built = built_parameters(cfg, stage)
        planned = rank_parameters(m, layout.tp, layout.pp, stage)
        if built != planned:  # the planner's bytes rest on its count: say so rather than print a wrong table
            raise AssertionError(f"stage {stage}: the planner counts {planned} parameters, the built model {built}")
        states = model_states(rank_tensors(m, layout.tp, layout.pp, stage), layout, precision)
        memory = RankMemory(stage, built, states, activations(m, layout, precision, stage, micro_batches))
        parts = memory.parts()
        blocks = stage_blocks(m.num_layers, layout.pp, stage)
        lines.append(f"{stage:>5} {f'{blocks.start}-{blocks.stop - 1}':>9} {count(built):>15} "
                     f"{gib(parts['weights']):>8} {gib(parts['gradients']):>7} {gib(parts['optimizer']):>7} "
                     f"{gib(parts['activations']):>7} {gib(parts['buffers']):>7} {gib(memory.total):>7} "
                     f"{gib(states.offloaded):>7}")
    _, line = verdict(cfg, gpus, gpu_memory_gb, hw, reserve_gb)
    return "\n".join(lines + [f"verdict: {line}"])
