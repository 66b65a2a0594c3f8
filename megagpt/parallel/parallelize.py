"""Parallelism applied to the GPT built as math, one concern per function, in order.

    build_model      the math (megagpt.model), initialised the same at every layout
    apply_pipeline   pp > 1: cut the layer list into stages (DeepSpeed PipelineModule)
    apply_sequence_parallel   parallel.sequence_parallel: sum over TP the gradients of sliced-applied parameters
    apply_activation_checkpointing   train.activation_checkpointing: recompute in the backward pass
    apply_compile    train.compile: torch.compile each transformer block on its own
    apply_deepspeed  the engine: ZeRO data parallelism, precision, clipping, the optimizer (with
                     megagpt.parallel.gradients' leaner gradient passes)

Tensor parallelism is not a step here: the layers are megatron-core TP layers built on
the group the ParallelContext names, so the math is sharded as it is built.

The pipeline's layer list is

    index 0            embedding (tied: TiedLayerSpec "embed")
    index 1 .. L       transformer blocks 0 .. L-1
    index L+1          final LayerNorm (pre-LN models only)
    last               the tied head (the embedding again)

and `canonical_name` maps its parameter names to the pp = 1 module's, which is how
checkpoints (megagpt.train.checkpoint) and the HF conversion (megagpt.hf) name weights.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch.distributed as dist
from torch import nn

from megagpt.config import Config
from megagpt.model.block import FinalNorm, TransformerBlock
from megagpt.model.embedding import Embedding, head_forward
from megagpt.model.gpt import GPT, lm_loss
from megagpt.model.layers import LayerContext
from megagpt.parallel.gradients import accumulate_without_a_copy, reduce_gradients_in_place, zero_sums_once
from megagpt.parallel.rng import RNGStreams
from megagpt.parallel.topology import ParallelContext
from megagpt.train.optimizer import adamw, deepspeed_config, own_clipping

TIED_EMBEDDING = "tied_modules.embed."


def parallelize(cfg: Config, pc: ParallelContext, global_batch_size: int, model_cls: type = GPT, mpu=None):
    """(DeepSpeed engine, RNG streams) for this rank: the whole chain above. model_cls: GPT, or
    ScalarGPT (reward model, critic; pp = 1 only); mpu: the groups of an RLHF role (default: pc's grid)."""
    ctx, rng = layer_context(cfg, pc)
    model = apply_pipeline(ctx, pc) if pc.pp > 1 else model_cls(ctx)
    if ctx.sequence_parallel:
        apply_sequence_parallel(model, ctx)
    apply_activation_checkpointing(model, cfg.train.activation_checkpointing)
    if cfg.train.compile:
        apply_compile(model, eager_random=bool(cfg.model.hidden_dropout or cfg.model.attention_dropout))
    return apply_deepspeed(model, cfg, pc, global_batch_size, mpu), rng


def layer_context(cfg: Config, pc: ParallelContext) -> tuple[LayerContext, RNGStreams]:
    rng = RNGStreams(cfg.train.seed, pc.tp_rank, pc.pp_rank, pc.device)
    ctx = LayerContext(model=cfg.model, seed=cfg.train.seed, tp_group=pc.tp_group, tp_rank=pc.tp_rank,
                       tp_size=pc.tp, rng=rng, sequence_parallel=cfg.parallel.sequence_parallel)
    return ctx, rng


def apply_pipeline(ctx: LayerContext, pc: ParallelContext) -> nn.Module:
    """This rank's stage of the layer list (module docstring), balanced by transformer blocks."""
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

    tied = dict(tied_weight_attr=["word_embeddings.weight"])
    layers = [TiedLayerSpec("embed", Embedding, ctx, **tied)]
    layers += [LayerSpec(TransformerBlock, ctx, i) for i in range(ctx.model.num_layers)]
    if ctx.model.norm_position == "pre":
        layers.append(LayerSpec(FinalNorm, ctx))
    layers.append(TiedLayerSpec("embed", Embedding, ctx, forward_fn=head_forward, **tied))
    # The embedding and head ride on the end stages. DeepSpeed prints its seeds, topology and a line per
    # layer; one line of ours says the same.
    with contextlib.redirect_stdout(io.StringIO()):
        module = PipelineModule(layers=layers, topology=pc.topology, loss_fn=lm_loss,
                                partition_method="type:TransformerBlock", activation_checkpoint_interval=0)
    if dist.get_rank() == 0:
        print(f"megagpt: pipeline stages: {stage_contents(module.parts, ctx.model.num_layers)}", flush=True)
    return module


def stage_contents(parts: list[int], num_layers: int) -> str:
    """What each stage holds, from PipelineModule's boundaries into the layer list above:
    '0: embedding, blocks 0-1 | 1: blocks 2-3, final norm, head'."""
    parts = [int(p) for p in parts]  # DeepSpeed's partitioner returns numpy integers
    head = parts[-1] - 1
    stages = []
    for stage, (start, stop) in enumerate(zip(parts, parts[1:])):
        blocks = [i - 1 for i in range(start, stop) if 1 <= i <= num_layers]
        names = ["embedding"] * (start == 0)
        if blocks:
            names.append(f"block {blocks[0]}" if len(blocks) == 1 else f"blocks {blocks[0]}-{blocks[-1]}")
        names += ["final norm"] * (start <= num_layers + 1 < min(stop, head))
        names += ["head"] * (stop == head + 1)
        stages.append(f"{stage}: {', '.join(names)}")
    return " | ".join(stages)


def apply_sequence_parallel(model: nn.Module, ctx: LayerContext) -> None:
    """The layers themselves split the sequence (megagpt.parallel.sequence_parallel); what is left is the
    parameters applied to a slice, the LayerNorms and the row-parallel biases, whose gradients cover
    only this rank's tokens: a hook sums them over TP before DeepSpeed takes them."""
    from megagpt.model.attention import Attention
    from megagpt.model.mlp import MLP
    from megagpt.parallel.sequence_parallel import sum_gradient_over

    sliced = []
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            sliced += list(module.parameters())
        elif isinstance(module, Attention):
            sliced.append(module.proj.bias)
        elif isinstance(module, MLP):
            sliced.append(module.fc2.bias)
    for param in sliced:
        param.register_hook(sum_gradient_over(ctx.tp_group))


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """none | selective (the attention core of every block, as Megatron's selective recompute) | full (every
    transformer block keeps only its input). On the blocks themselves, so pipeline stages get it too; the
    recomputation replays the dropout generators, so losses do not change."""
    from megagpt.model.attention import Attention

    for module in model.modules():
        if isinstance(module, TransformerBlock):
            module.recompute = mode == "full"
        elif isinstance(module, Attention):
            module.recompute_core = mode == "selective"


def apply_compile(model: nn.Module, eager_random: bool = False) -> None:
    """torch.compile every transformer block in place, as torchtitan does.

    Per block, not the whole model: the blocks share one compiled graph, DeepSpeed's
    pipeline and ZeRO hooks stay outside it, and `Module.compile` keeps parameter names
    (checkpoints and the name map do not see an `_orig_mod.` prefix).
    eager_random (a model with dropout): the masks are eager's, drawn from the RNG streams' generators, so the
    losses stay eager's, and a resume may switch compile (inductor's own generator put them 6e-3 apart).
    """
    import torch._dynamo
    import torch._inductor.config

    if eager_random:
        torch._inductor.config.fallback_random = True

    # megatron-core's RowParallelLinear calls warnings.warn (a deprecation notice) on every forward,
    # which would split each block's graph in 7; inside compiled code the notice is dropped.
    torch._dynamo.config.ignore_logging_functions.add(warnings.warn)
    for module in model.modules():
        if isinstance(module, TransformerBlock):
            module.compile()


def apply_deepspeed(model: nn.Module, cfg: Config, pc: ParallelContext, global_batch_size: int, mpu=None):
    """The DeepSpeed engine: the pipeline engine for a PipelineModule, else the plain one (ZeRO 0/1/2/3).
    ZeRO 0 (but bf16 at pp > 1) steps a ClippingAdamW, which measures and clips the norm as ZeRO does."""
    import deepspeed
    from deepspeed.runtime.pipe.topology import PipelineParallelGrid

    # A PipelineModule brings its own grid; with pp = 1 DeepSpeed needs one as mpu.
    if mpu is None and pc.pp == 1:
        with contextlib.redirect_stdout(io.StringIO()):  # "Using topology: ..."
            mpu = PipelineParallelGrid(topology=pc.topology)
    clipping = own_clipping(cfg)
    if clipping:
        optimizer = adamw(model, cfg.optim, clip_grad=cfg.optim.clip_grad, mpu=mpu if mpu is not None else model._grid)
    else:
        optimizer = adamw(model, cfg.optim)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, mpu=mpu,
                                      config=deepspeed_config(cfg, pc.dp, global_batch_size))
    if clipping:
        optimizer.ready = True  # DeepSpeed's priming step (FP16_UnfusedOptimizer) is over
        if engine.optimizer is not optimizer:
            optimizer.report_to = engine.optimizer
    reduce_gradients_in_place(engine, pc)
    accumulate_without_a_copy(engine.optimizer)
    zero_sums_once(engine.optimizer)
    return engine


def canonical_name(name: str, num_layers: int) -> str:
    """A parameter's name in the pp = 1 module (GPT), from its name in either module."""
    if name.startswith(TIED_EMBEDDING):
        return "embedding." + name[len(TIED_EMBEDDING):]
    head, _, rest = name.partition(".")
    if not head.isdigit():
        return name
    index = int(head)
    if 1 <= index <= num_layers:
        return f"blocks.{index - 1}.{rest}"
    return f"final_norm.{rest}"
