"""Step time and MFU of a layout, from FLOPs and bandwidths stated up front.

The hardware is a few numbers a user can override (`megagpt plan --gpu-tflops ...`): the GPU's
dense peak for the run's precision, the fraction of it large matrix multiplications reach
(`matmul_efficiency`), and the bus bandwidths NCCL reaches inside a node (NVLink) and between
nodes (per GPU, the NIC); give measured nccl-tests busbw figures where you have them. Rank order
is TP fastest, then DP, then PP (megagpt.parallel.topology), and a node holds consecutive ranks, so
on more than one node a TP group stays inside a node when tp divides gpus_per_node, a DP group when
tp·dp does (tp 4 on 6-GPU nodes puts ranks 4-7 on two nodes), and some neighbouring pipeline stages
always sit on different nodes.

One micro-batch on pipeline stage i (per rank; T = s·b tokens, L_i its blocks, e activation bytes):

    compute   T·(L_i·(6·W + 3·A + R) + head_i) / tp / (peak·matmul_efficiency)
              W = 4h² + 2hf matmul weights per layer (2 FLOPs each forward), A = 4·h·span the
              attention core forward (megagpt.planner.counts), R the recompute: a block's forward
              (2W + A) with full, the core's A with selective; head_i = 6·V·h on the last stage
    tensor    (4 + 2·[full recompute])·L_i all-reduces of e·T·h bytes, each 2(tp−1)/tp·bytes/bw
              (sequence parallelism turns each into an all-gather plus a reduce-scatter: the same
              volume); the embedding and the head add one each on the end stages
    pipeline  2·e·T·h/bw: the activation sent on and its gradient sent back

1F1B with m micro-batches per step runs (m + pp − 1) slots of the slowest stage, so the
bubble is (pp − 1)/(m + pp − 1) of the step. Data parallelism adds its collectives (dp_collectives: the
bytes a rank hands to each kind in a step, Φ its parameters), each costing (d−1)/d of them on the bus, twice
that for an all-reduce (a ring's reduce-scatter, then its all-gather):

    ZeRO 0    all-reduce Φ·w (the gradients, at the step)
    ZeRO 1    all-reduce Φ·w, all-gather Φ·e (the updated partitions); BF16_Optimizer (bf16 at ZeRO 1, or
              at ZeRO 0 with pp > 1) the same
    ZeRO 2    all-reduce Φ·w per micro-batch (the gradients, as backward makes them), all-gather Φ·e
    ZeRO 3    all-gather 2·Φ·e per micro-batch (the parameters, for forward and backward), reduce-scatter
              Φ·w per micro-batch

w is the gradients' bytes on the wire: e, DeepSpeed's communication type, or 4 with parallel.grad_reduce_in_fp32.
ZeRO 1 and 2 all-reduce what they could reduce-scatter (DeepSpeed's use_multi_rank_bucket_allreduce), and
ZeRO 3 keeps tensors under 1e5 elements whole on every rank, which a large model's traffic hardly sees;
tests/distributed/test_planner_traffic.py measures these bytes in DeepSpeed's collectives.

Nothing overlaps communication with compute (DeepSpeed's defaults, and Megatron's 2021 runs),
so these add. The optimizer step is memory-bound and small next to these; it is left out.
MFU = model FLOPs per step (6N + attention, no recompute) / (step time · GPUs · peak).
"""

from __future__ import annotations

from dataclasses import dataclass

from megagpt.config import ModelConfig
from megagpt.planner.counts import attention_span, rank_parameters, stage_blocks, training_flops_per_token
from megagpt.planner.memory import BYTES, Layout, bf16_optimizer, wire_bytes


@dataclass(frozen=True)
class Hardware:
    gpu_tflops: float = 989.0  # dense peak at the run's precision (H100 SXM, bf16)
    matmul_efficiency: float = 0.6  # fraction of peak a large GEMM reaches in training
    gpus_per_node: int = 8
    intra_node_gbps: float = 2880.0  # NVLink all-reduce bus bandwidth, Gbit/s (360 GB/s, H100 nvlink 4)
    inter_node_gbps: float = 360.0  # per GPU between nodes, Gbit/s (400G NDR InfiniBand at 90%)


A100 = Hardware(gpu_tflops=312.0, intra_node_gbps=1840.0, inter_node_gbps=180.0)  # DGX A100, HDR 200G per GPU


@dataclass
class StepTime:
    compute: float  # seconds on the slowest stage, over the whole step
    tensor_parallel: float
    pipeline: float
    data_parallel: float
    bubble: float  # fraction of the step the pipeline idles

    @property
    def total(self) -> float:
        return (self.compute + self.tensor_parallel + self.pipeline) / (1 - self.bubble) + self.data_parallel


def _bandwidth(hw: Hardware, span: int, gpus: int) -> float:
    """Bytes/s for groups that each spread over one of the runs of `span` ranks [0, span), [span, 2·span), ...
    of a `gpus`-rank world. They stay inside nodes only if the world fits one node or the runs tile the nodes: any
    run a node boundary cuts holds a group with ranks on both sides, and the slowest group paces the step."""
    inside = gpus <= hw.gpus_per_node or hw.gpus_per_node % span == 0
    return (hw.intra_node_gbps if inside else hw.inter_node_gbps) * 1e9 / 8


def layer_forward_flops(m: ModelConfig, layer_index: int) -> tuple[float, float]:
    """(matmul, attention core) forward FLOPs per token of one transformer layer."""
    h, f = m.hidden_size, m.ffn_size
    return 2.0 * (4 * h * h + 2 * h * f), 4.0 * h * attention_span(m, layer_index)


def step_time(m: ModelConfig, layout: Layout, precision: str, global_batch: int, hw: Hardware) -> StepTime:
    t, pp, d, b = layout.tp, layout.pp, layout.dp, layout.micro_batch
    e, tokens = BYTES[precision], m.seq_length * b
    micro = global_batch // (d * b)
    flops_per_s = hw.gpu_tflops * 1e12 * hw.matmul_efficiency
    # a TP group is t consecutive ranks, a DP group every t-th rank of t·d consecutive ones
    tp_bw, dp_bw = _bandwidth(hw, t, layout.gpus), _bandwidth(hw, t * d, layout.gpus)
    # stages follow each other every t·d ranks: once they span more than a node, some hop crosses between nodes,
    # and the slowest hop paces the pipeline (tp2 dp2 pp4 on 8-GPU nodes: stage 1 -> 2 crosses)
    pp_bw = _bandwidth(hw, t * d * pp, layout.gpus)
    all_reduce = 2 * (t - 1) / t * e * tokens * m.hidden_size / tp_bw if t > 1 else 0.0
    slowest = (0.0, 0.0)
    for stage in range(pp):
        flops = 0.0
        for i in stage_blocks(m.num_layers, pp, stage):
            matmul, core = layer_forward_flops(m, i)
            redo = {"full": matmul + core, "selective": core}.get(layout.recompute, 0.0)
            flops += 3 * (matmul + core) + redo
        ends = (stage == 0) + (stage == pp - 1)
        if stage == pp - 1:
            flops += 6.0 * m.padded_vocab_size * m.hidden_size
        compute = tokens * flops / t / flops_per_s
        collectives = len(stage_blocks(m.num_layers, pp, stage)) * (4 + 2 * (layout.recompute == "full")) + ends
        if compute + collectives * all_reduce > sum(slowest):
            slowest = (compute, collectives * all_reduce)
    p2p = 2 * e * tokens * m.hidden_size / pp_bw if pp > 1 else 0.0
    phi = max(rank_parameters(m, t, pp, s) for s in range(pp))
    handed = dp_collectives(layout, precision, micro, phi)
    dp_time = sum(BUS_PASSES[kind] * size for kind, size in handed.items()) * (d - 1) / d / dp_bw
    bubble = (pp - 1) / (micro + pp - 1)
    return StepTime(micro * slowest[0], micro * slowest[1], micro * p2p, dp_time, bubble)


BUS_PASSES = {"all_reduce": 2, "all_gather": 1, "reduce_scatter": 1}


def dp_collectives(layout: Layout, precision: str, micro_batches: int, phi: int) -> dict[str, int]:
    """Bytes a rank hands to each kind of collective over DP in one step (module docstring): an all-reduce's
    tensor, an all-gather's output, a reduce-scatter's input."""
    e, w = BYTES[precision], wire_bytes(layout, precision)
    if layout.zero_stage == 3:
        return {"all_gather": 2 * micro_batches * phi * e, "reduce_scatter": micro_batches * phi * w}
    grads = {"all_reduce": (micro_batches if layout.zero_stage == 2 else 1) * phi * w}
    if layout.zero_stage == 0 and not bf16_optimizer(layout, precision):
        return grads  # every rank steps the whole optimizer: nothing to gather
    return {**grads, "all_gather": phi * e}


def mfu(m: ModelConfig, layout: Layout, global_batch: int, seconds: float, hw: Hardware) -> float:
    model_flops = training_flops_per_token(m) * global_batch * m.seq_length
    return model_flops / (seconds * layout.gpus * hw.gpu_tflops * 1e12)
