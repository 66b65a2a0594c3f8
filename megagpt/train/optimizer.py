"""The optimizer (AdamW, GPT-3's settings) and the DeepSpeed config that carries batch, precision and clipping."""

from __future__ import annotations

import torch
from torch import nn

from megagpt.config import Config, OptimConfig


def adamw(model: nn.Module, o: OptimConfig, clip_grad: float | None = None, mpu=None) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and LayerNorm parameters (GPT-3/Megatron convention).

    fused=True: one vectorised kernel over ZeRO's flat buffer, on CPU as on GPU; the
    unfused loop costs 5-8x more per step there. clip_grad not None: a ClippingAdamW
    (ZeRO 0, see own_clipping), which clips at that norm (0: never) over mpu's model-parallel group.
    """
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=True)
    if clip_grad is None:
        return torch.optim.AdamW(groups, **kwargs)
    return ClippingAdamW(groups, clip_grad=clip_grad, mpu=mpu, **kwargs)


def own_clipping(cfg: Config) -> bool:
    """Whether the optimizer itself (ClippingAdamW), not DeepSpeed, measures and clips the gradient norm.

    ZeRO 0, except bf16 at pp > 1: DeepSpeed without ZeRO steps the client optimizer itself (fp32) or through
    FP16_UnfusedOptimizer (bf16: per-parameter fp32 master copies; fp16 is refused at ZeRO 0), and neither
    measures the norm as ZeRO does (fp32: deepspeed.runtime.utils.clip_grad_norm_ counts a pipeline's tied
    embedding twice and the engine reports no norm; the unfused wrapper measures gradient tensors, which
    lack the tensor-parallel marks, so tp ranks > 0 count nothing). bf16 at pp > 1 takes BF16_Optimizer,
    which measures and clips as ZeRO 1.
    """
    p = cfg.parallel
    return p.zero_stage == 0 and not (cfg.train.precision == "bf16" and p.pp > 1)


class ClippingAdamW(torch.optim.AdamW):
    """AdamW that measures the global gradient norm as ZeRO 1/2 do and clips to clip_grad before stepping.

    The norm sums the squares of every gradient this rank holds but pipeline-replicated copies
    (`ds_pipe_replicated`, the tied head on the last stage), counting parameters that are not
    tensor-parallel only on tensor-parallel rank 0, summed over mpu's model-parallel group (DeepSpeed's
    stage_1_and_2.get_grad_norm_direct); the clip is ZeRO's: grads / max(1, (norm + 1e-6) / clip_grad).
    DeepSpeed may swap the parameters for fp32 copies (FP16_UnfusedOptimizer) in place, keeping their
    order, so which ones count is fixed here, at construction.

    step() does nothing until `ready` (set once deepspeed.initialize returns): FP16_UnfusedOptimizer
    takes a step on zero gradients at construction to create Adam's state, which would apply weight
    decay at the initial lr to the master copy and count one step too many.
    """

    def __init__(self, params, clip_grad: float = 0.0, mpu=None, **kwargs):
        super().__init__(params, **kwargs)
        self.clip_grad, self.mpu = clip_grad, mpu
        self.ready = False
        self.report_to = None  # DeepSpeed's wrapper, if any: the engine reads the norm from it
        self._global_grad_norm = None
        self.counted = [[not getattr(p, "ds_pipe_replicated", False) for p in g["params"]] for g in self.param_groups]
        self.sharded = [[bool(getattr(p, "tensor_model_parallel", False) or getattr(p, "model_parallel", False))
                         for p in g["params"]] for g in self.param_groups]

    def grad_norm(self) -> torch.Tensor:
        """ZeRO's arithmetic: per group, the squares of fp64 per-tensor norms summed and cast to fp32, summed
        over the model-parallel group and rooted; then the groups' L2 norm."""
        from deepspeed.runtime.zero.utils import get_norm_dtype
        from deepspeed.utils.bwc import bwc_tensor_model_parallel_rank

        tp_rank = bwc_tensor_model_parallel_rank(self.mpu)
        reduce = self.mpu is not None and self.mpu.get_model_parallel_world_size() > 1
        device = self.param_groups[0]["params"][0].device
        group_norms = []
        for group, counted, sharded in zip(self.param_groups, self.counted, self.sharded):
            norms = [torch.linalg.vector_norm(p.grad.detach().to(get_norm_dtype()))
                     for p, count, shard in zip(group["params"], counted, sharded)
                     if p.grad is not None and count and (shard or tp_rank == 0)]
            total = torch.stack(norms).pow(2).sum().float() if norms else torch.zeros((), device=device)
            if reduce:
                torch.distributed.all_reduce(total, group=self.mpu.get_model_parallel_group())
            group_norms.append(total.sqrt())
        return torch.linalg.vector_norm(torch.stack(group_norms))

    @torch.no_grad()
    def step(self, closure=None):
        if not self.ready:
            return None
        norm = self.grad_norm()
        self._global_grad_norm = norm
        if self.report_to is not None:
            self.report_to._global_grad_norm = norm
        if self.clip_grad > 0:
            scale = 1.0 / torch.clamp((norm + 1e-6) / self.clip_grad, min=1.0)
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            torch._foreach_mul_(grads, scale)
        return super().step(closure)


def zero_config(cfg: Config) -> dict:
    p = cfg.parallel
    zero = {"stage": p.zero_stage}  # 0: plain data parallelism (gradients all-reduced, no partitioning)
    if p.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if p.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return zero


def deepspeed_config(cfg: Config, dp: int, global_batch_size: int) -> dict:
    t = cfg.train
    ds = {
        "train_batch_size": global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": global_batch_size // (t.micro_batch_size * dp),
        # ZeRO 0 but bf16 at pp > 1: ClippingAdamW clips instead (own_clipping)
        "gradient_clipping": 0.0 if own_clipping(cfg) else cfg.optim.clip_grad,
        "zero_optimization": zero_config(cfg),
        "zero_allow_untested_optimizer": True,
        # our AdamW (fused, decay groups) also steps offloaded states: DeepSpeed would insist on its CPUAdam
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }
    if cfg.parallel.sequence_parallel:
        # DeepSpeed sends 1/tp of a stage's output from each TP rank and all-gathers it on arrival, which
        # assumes the TP ranks hold the same tensor; under sequence parallelism each holds its own slice.
        ds["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
    if t.precision == "bf16":
        # bf16 has no loss scale to lower, so DeepSpeed's per-tensor inf/NaN scan before each ZeRO step only
        # skips the step, at about a dozen small ops per parameter tensor (3,800 a step at gpt3-xl's depth).
        # The trainer stops on a non-finite loss or gradient norm instead (megagpt.train.guard), as Megatron-LM does.
        # immediate_grad_update: BF16_Optimizer adds each bf16 gradient to its fp32 sum as soon as backward has it,
        # and drops it. DeepSpeed's default kept every bf16 gradient through the step (2 bytes per parameter held)
        # and zeroed and re-summed them each micro-batch before adding them up: the same fp32 sums, bitwise.
        ds["bf16"] = {"enabled": True, "check_grad_overflow": False, "immediate_grad_update": True}
        if cfg.parallel.zero_stage >= 1:
            # Gradients summed over micro-batches in fp32, as Megatron-LM does with bf16: in bf16 (DeepSpeed's
            # default) the 96 micro-batches of GPT-3 175B's layout add up with an 8-bit mantissa. Their reduction
            # over DP is in bf16 unless parallel.grad_reduce_in_fp32 (Megatron-LM's default). At ZeRO 1 DeepSpeed then
            # steps BF16_Optimizer (config.steps_bf16_optimizer). ZeRO 0 has no fp32 accumulation in DeepSpeed.
            ds["data_types"] = {"grad_accum_dtype": "fp32"}
        if cfg.parallel.grad_reduce_in_fp32:  # DeepSpeed's type for every gradient reduction, at each ZeRO stage
            ds["communication_data_type"] = "fp32"
    elif t.precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "hysteresis": 2,
                      "min_loss_scale": 1}
    return ds
