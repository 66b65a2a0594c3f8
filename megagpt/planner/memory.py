"""Bytes one rank holds while training: model states as DeepSpeed keeps them, and activations.

Model states (DeepSpeed 0.19 with the defaults megagpt leaves in place; e = 4 bytes for fp32
parameters, 2 for bf16/fp16; Φ = the rank's parameters, split into AdamW's two groups, matrices
with weight decay and vectors without, in registration order; d = data parallel size):

    ZeRO 0     weights    Φ·e + 4·Φ·[e = 2]       plain data parallelism: the model, and in bf16 the fp32
                                                   master copy of every parameter (FP16_UnfusedOptimizer)
               optimizer  8·Φ                     Adam's two moments of every parameter, fp32
               gradients  Φ·e                     every parameter's gradient, all-reduced at the step
                                                   (bf16: cast to fp32 for the step, 4·Φ transient)
               bf16 at pp > 1 (DeepSpeed's pipeline takes BF16_Optimizer there): ZeRO 1's weights and
               optimizer (the master copy and moments are partitioned over DP), and gradients
               e·d·Σ_g P_g (the padded flat accumulation buffer: megagpt has each parameter's bf16 gradient
               added to it and dropped as backward produces it, bf16.immediate_grad_update)
    ZeRO 1/2   weights    e·d·Σ_g P_g + 4·Σ_g P_g  the model, whose parameters are views of each group
                                                   flattened and padded to a multiple of 2d, plus the
                                                   fp32 master copy of this rank's partition
                                                   P_g = ceil(N_g / 2d)·2 of each group
               optimizer  8·Σ_g P_g                Adam's two moments, fp32
               gradients  ZeRO 1: Φ·e              every parameter's gradient, accumulated between
                                                   micro-batches
                          ZeRO 2: e·Σ whole tensors that overlap this rank's partition
               bf16 (gradients summed over micro-batches in fp32, megagpt.train.optimizer): ZeRO 1 steps
               BF16_Optimizer, whose gradients are 4·d·Σ_g P_g (the fp32 accumulation buffer of the whole
               padded groups; each parameter's bf16 gradient is added and dropped as backward produces it),
               and at pp = 1 the tied embedding's bf16 gradient, V·h·e/t: the head's part waits in autograd
               from the first op of the backward to the last (the embedding's), when it is added;
               ZeRO 2 keeps 4·Σ_g P_g, this rank's fp32 partition; ZeRO 3 4·Σ_p ceil(n_p/d)
    ZeRO 3     weights    e·Σ_p ceil(n_p/d) + e·Σ_{n_p ≤ 1e5} ceil(n_p/d)·d + 4·Σ_p ceil(n_p/d)
                                                   the partitions, the small tensors every rank keeps
                                                   whole (stage3_param_persistence_threshold, padded
                                                   to a multiple of d), the fp32 master partition
               optimizer  8·Σ_p ceil(n_p/d)
               gradients  4·Σ_p ceil(n_p/d)           fp32 in either precision

Scalars (step counters, norms) are left out. These are checked to the byte against the tensors a DeepSpeed engine holds on CPU
(tests/distributed/test_planner_memory.py). Offloading moves the master copy, moments and
the fp32 gradient partition to CPU memory; `offload_params` moves ZeRO 3's partitions; at ZeRO 1/2
offloading keeps more on each side than that (`_offloaded`); checked in total on CPU.
DeepSpeed's own ZeRO optimizers keep a gradient bucket of 5e8 elements (`_bucket`): ZeRO 3 from the start (in
the wire type), ZeRO 1 from a step's first backward to the step (fp32 at bf16); both counted with the
gradients. Transient buffers are reported apart: ZeRO 2's bucket, which lives through each backward, a copy of
the bucket's gradients in the wire type where that differs (parallel.grad_reduce_in_fp32), and ZeRO 3's
gathered parameters (the two largest modules whole, the embedding or a block: the one computing and the
one prefetched).

Activations per transformer layer and micro-batch (Korthikanti et al. 2022, "Reducing
activation recomputation in large transformer models", adapted to this block: s sequence,
b micro-batch, h hidden, f MLP width, a heads, t tp, e activation bytes; attention runs as a
fused kernel (flash on GPU), which keeps its output and a 4-byte log-sum-exp per query and
head instead of the a·s² scores of the paper's 5as/h term):

    kept, none       e·sb·(4h·r + (4h + 2f)/t) + 4·asb/t + 2·sbh·r·[hidden dropout > 0]
                     r = 1/t with sequence parallelism, else 1: LayerNorm inputs and the inputs of
                     qkv and fc1 are replicated over TP unless SP splits them along the sequence;
                     q, k, v, the attention output, fc1's output and GELU's output are split.
                     (The paper's sbh(10 + 24/t + 5as/(ht)) at e = 2, with dropout masks.)
    kept, selective  the same less the attention core's 4·asb/t (with a fused kernel the core
                     keeps little: Megatron's selective recompute saves most for unfused attention)
    kept, full       e·sbh·r: the block's input; one layer's full set is rebuilt during its backward

Dropout masks cost a byte per element (CUDA keeps bool masks), the embedding's included.
A stage holds min(pp − stage, m) micro-batches in flight under 1F1B (m micro-batches per step;
DeepSpeed's TrainSchedule), one with pp = 1. The last stage adds the head: the final norm's input,
the head's input and the cross entropy's fp32 softmax, e·sbh·(1 + r) + 4·sb·V/t kept (the head's input is gathered
whole), and while the loss is computed the logits, e·sb·V/t, and at tp = 1 with e = 2 their fp32 copy,
4·sb·V (torch's fused cross entropy reads the copy and writes the log-softmax beside it; megatron-core's
at tp > 1 turns the copy into the softmax in place). Measured forward peaks: gpt3-small, micro-batch 4,
bf16: on an H200 at kept + e·sb·V with megatron-core's loss (0.01 GiB printed); on an H100 with torch's,
6,569,456,128 bytes against kept + (e + 4)·sb·V = 6,566,707,200.
A stage that sends on keeps its output (e·sbh·r) per micro-batch in flight, one that receives a
buffer of the same size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megagpt.config import ModelConfig, steps_bf16_optimizer
from megagpt.planner.counts import rank_tensors, stage_blocks

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# DeepSpeed's defaults, which megagpt.train.optimizer.zero_config does not change
ZERO_ALIGNMENT = 2  # ZeRO 1/2 pad each flat group to a multiple of this times dp (nccl_start_alignment_factor)
PERSISTENCE_THRESHOLD = 100_000  # ZeRO 3 keeps whole every tensor of at most this many elements
REDUCE_BUCKET = 500_000_000  # elements of DeepSpeed's gradient bucket (reduce_bucket_size), allocated whole
MASK_BYTES = 1  # a dropout mask element on CUDA (torch keeps a bool mask; on CPU it keeps e bytes)


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    micro_batch: int = 1
    recompute: str = "none"  # train.activation_checkpointing
    sequence_parallel: bool = False  # parallel.sequence_parallel
    zero_stage: int = 1
    offload_optimizer: bool = False
    offload_params: bool = False
    grad_reduce_in_fp32: bool = False  # parallel.grad_reduce_in_fp32 (a config's choice, not searched)

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def label(self) -> str:
        flags = [f"tp{self.tp}", f"pp{self.pp}", f"dp{self.dp}", f"mb{self.micro_batch}", f"zero{self.zero_stage}",
                 f"recompute={self.recompute}"]
        flags += ["sp"] if self.sequence_parallel else []
        flags += ["offload-optimizer"] if self.offload_optimizer else []
        flags += ["offload-params"] if self.offload_params else []
        flags += ["fp32-grad-reduce"] if self.grad_reduce_in_fp32 else []
        return " ".join(flags)


@dataclass
class ModelStates:
    weights: int
    gradients: int
    optimizer: int
    offloaded: int = 0  # bytes kept in CPU memory instead
    buffers: int = 0  # transient, during the backward


@dataclass
class Activations:
    kept: int  # held from a micro-batch's forward to its backward, all micro-batches in flight
    transient: int  # the largest extra at one moment: a layer rebuilt by full recompute, the logits


def adam_groups(tensors: list[tuple[int, int]]) -> list[list[int]]:
    """AdamW's parameter groups (megagpt.train.optimizer.adamw): matrices, then vectors, in order."""
    return [[n for n, ndim in tensors if ndim >= 2], [n for n, ndim in tensors if ndim < 2]]


def model_states(tensors: list[tuple[int, int]], layout: Layout, precision: str, dp_rank: int | None = None
                 ) -> ModelStates:
    """What DeepSpeed holds on dp rank `dp_rank` for these parameters (module docstring); None: the
    rank holding the most (they differ only in ZeRO 2's gradients)."""
    e, d = BYTES[precision], layout.dp
    groups = [g for g in adam_groups(tensors) if g]
    phi = sum(n for n, _ in tensors)
    if layout.zero_stage == 0 and not bf16_optimizer(layout, precision):
        master = 0 if precision == "fp32" else 4 * phi  # fp32: AdamW steps the parameters themselves
        # FP16_UnfusedOptimizer casts every gradient to fp32 for the step: transient, counted with the buffers
        return ModelStates(e * phi + master, e * phi, 8 * phi, buffers=master)
    if layout.zero_stage == 3:
        parts = sum(math.ceil(n / d) for n, _ in tensors)
        persistent = sum(math.ceil(n / d) * d for n, _ in tensors if n <= PERSISTENCE_THRESHOLD)
        master = 4 * parts
        model = e * persistent + (0 if layout.offload_params else e * parts)
        cpu = e * parts if layout.offload_params else 0
        grads = 4 * parts  # ZeRO 3 accumulates in fp32 (bf16: megagpt asks it to; fp32: the model's own)
        sizes = sorted(sum(n for n, _ in module) for module in _modules(tensors))
        buffers = sum(sizes[-2:]) * e  # the two largest: one computing, the next prefetched
        bucket = _bucket(layout, precision)
        if layout.offload_optimizer:  # master, moments, the fp32 gradient partition (grad_partitions_flat_buffer)
            return ModelStates(model, bucket, 0, cpu + 4 * master + grads, buffers)  # and the master's .grad: CPU
        return ModelStates(model + master, grads + bucket, 2 * master, cpu, buffers)
    partitions = [math.ceil(sum(g) / (ZERO_ALIGNMENT * d)) * ZERO_ALIGNMENT for g in groups]
    master, model = 4 * sum(partitions), e * d * sum(partitions)  # the params are views of the padded flat groups
    overlap = 0  # ZeRO 2's: the elements of the whole tensors that overlap the rank's partition (it sums those)
    if layout.zero_stage == 2:
        per_rank = [sum(x) for x in zip(*(_overlaps(g, p, d) for g, p in zip(groups, partitions)))]
        overlap = max(per_rank) if dp_rank is None else per_rank[dp_rank]
    if layout.offload_optimizer:
        return _offloaded(layout, precision, phi, max(n for n, _ in tensors), sum(partitions), overlap, model)
    if bf16_optimizer(layout, precision):  # the flat buffer each gradient is added to as it comes: in fp32 at
        accumulate = 4 if layout.zero_stage == 1 else e  # ZeRO 1 (megagpt asks), in bf16 at ZeRO 0 (no choice)
        grads = accumulate * d * sum(partitions) + tied_gradient_in_flight(tensors, layout, precision)
    elif layout.zero_stage == 1:  # fp32: every parameter's gradient, summed in place, and the bucket
        grads = phi * e + _bucket(layout, precision)
    elif precision == "bf16":  # fp32 accumulation: this rank's partition
        grads = 4 * sum(partitions)
    else:
        grads = e * overlap
    return ModelStates(model + master, grads, 2 * master, 0, _reduce_buffers(layout, precision, phi))


def _bucket(layout: Layout, precision: str) -> int:
    """The gradient bucket DeepSpeed's own ZeRO optimizers keep (not BF16_Optimizer): reduce_bucket_size
    elements, whole whatever the model's size. ZeRO 3 allocates it at the start, in the wire type; ZeRO 1 at a
    step's first backward until the step, in the type it sums in (fp32 at bf16); ZeRO 2 for each backward alone
    (`_reduce_buffers`)."""
    if bf16_optimizer(layout, precision) or layout.zero_stage not in (1, 2, 3):
        return 0
    if layout.zero_stage == 3:
        return REDUCE_BUCKET * wire_bytes(layout, precision)
    return REDUCE_BUCKET * (4 if precision == "bf16" and layout.zero_stage == 1 else BYTES[precision])


def _reduce_buffers(layout: Layout, precision: str, phi: int) -> int:
    """Transient at ZeRO 1/2 with DeepSpeed's own optimizer: ZeRO 2's bucket through each backward, and where
    the wire type differs from the bucket's, a copy of what it holds (at most the rank's gradients) while that
    is reduced."""
    if layout.zero_stage not in (1, 2) or bf16_optimizer(layout, precision):
        return 0
    bucket, wire = _bucket(layout, precision), wire_bytes(layout, precision)
    copy = min(phi, REDUCE_BUCKET) * wire if wire * REDUCE_BUCKET != bucket else 0
    return (bucket if layout.zero_stage == 2 else 0) + copy


def _offloaded(layout: Layout, precision: str, phi: int, largest: int, partition: int, overlap: int,
               model: int) -> ModelStates:
    """ZeRO-Offload at ZeRO 1/2: DeepSpeed's ZeRO optimizer with cpu_offload, read from its source (which
    tensor lives where) and checked in total against what it holds on CPU (tests/distributed/test_planner_memory.py).

    GPU: the model; one tensor's gradient staged on its way to the CPU (the largest tensor's size); and the
    gradients summed between micro-batches: at ZeRO 1 every parameter's, in its .grad (bf16: in an fp32
    grad_accum beside it, and an fp32 partition built at the step, a transient; and the bucket, `_bucket`); at
    bf16 ZeRO 2 an fp32 partition (fp32 and fp16 ZeRO 2 sum on the CPU). CPU: the fp32 master partition, Adam's moments, the fp32
    gradient partition the CPU step reads, the updated partition in the model's type on its way back, the staged
    gradient's CPU side, and (fp32, fp16 ZeRO 2) the sums of every whole tensor overlapping the partition."""
    e = BYTES[precision]
    staging = e * largest
    if precision == "bf16":
        summed = 4 * (phi if layout.zero_stage == 1 else partition)
        transient = 4 * partition if layout.zero_stage == 1 else 0
    else:
        summed, transient = (e * phi if layout.zero_stage == 1 else 0), 0
    sums_on_cpu = e * overlap if layout.zero_stage == 2 and precision != "bf16" else 0
    cpu = (4 + 8 + 4 + e) * partition + staging + sums_on_cpu
    gpu = summed + staging + (_bucket(layout, precision) if layout.zero_stage == 1 else 0)
    return ModelStates(model, gpu, 0, cpu, max(transient, _reduce_buffers(layout, precision, phi)))


def wire_bytes(layout: Layout, precision: str) -> int:
    """Bytes per gradient element on the wire of DP's reductions: DeepSpeed's communication_data_type."""
    return 4 if layout.grad_reduce_in_fp32 else BYTES[precision]


def tied_gradient_in_flight(tensors: list[tuple[int, int]], layout: Layout, precision: str) -> int:
    """Bytes of BF16_Optimizer's one bf16 gradient alive through the backward: at pp = 1 the head is the embedding,
    whose gradient autograd holds from the head's backward (the first) until the embedding's (the last), and only
    then adds to the fp32 sum. At pp > 1 each copy gets its gradient in one go. Not held after the backward."""
    if not bf16_optimizer(layout, precision) or layout.pp > 1:
        return 0
    return BYTES[precision] * tensors[0][0]  # rank_tensors: the word embedding first


def bf16_optimizer(layout: Layout, precision: str) -> bool:
    """Whether DeepSpeed steps BF16_Optimizer at this layout (megagpt.config.steps_bf16_optimizer)."""
    return steps_bf16_optimizer(precision, layout.zero_stage, layout.pp, layout.offload_optimizer)


def _overlaps(sizes: list[int], partition: int, d: int) -> list[int]:
    """Per dp rank, the elements of the whole tensors that overlap its slice [r·partition, (r+1)·partition)
    of the flat group: what ZeRO 2 accumulates gradients into."""
    per_rank, start = [0] * d, 0
    for n in sizes:
        for r in range(start // partition, min(d - 1, (start + n - 1) // partition) + 1):
            per_rank[r] += n
        start += n
    return per_rank


def _modules(tensors: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """The rank's tensors cut at its modules (rank_tensors' order), for ZeRO 3's gather size: the embedding's two
    matrices where the stage holds it (a block starts with its LayerNorm's vectors instead), each block's 12
    tensors, then the final norm's two. Cut every 12 from the start, the first chunk was the embedding with most
    of block 0 (gpt3-xl: 31% over the larger of the two)."""
    embedding = 2 if tensors and tensors[0][1] == 2 else 0
    rest = tensors[embedding:]
    return ([tensors[:embedding]] if embedding else []) + [rest[i:i + 12] for i in range(0, len(rest), 12)]


def layer_activations(m: ModelConfig, layout: Layout, precision: str, recompute: str | None = None) -> int:
    """Bytes one transformer layer keeps for its backward, per micro-batch (module docstring)."""
    e, t = BYTES[precision], layout.tp
    s, b, h, f, a = m.seq_length, layout.micro_batch, m.hidden_size, m.ffn_size, m.num_heads
    r = 1 / t if layout.sequence_parallel else 1
    recompute = recompute or layout.recompute
    if recompute == "full":
        return int(e * s * b * h * r)
    core = 0 if recompute == "selective" else 4 * a * s * b / t
    masks = 2 * MASK_BYTES * s * b * h * r if m.hidden_dropout > 0 else 0
    return int(e * s * b * (4 * h * r + (4 * h + 2 * f) / t) + core + masks)


def activations(m: ModelConfig, layout: Layout, precision: str, stage: int, micro_batches: int) -> Activations:
    """Activation bytes of pipeline stage `stage` over one step of `micro_batches` micro-batches."""
    e, t, pp = BYTES[precision], layout.tp, layout.pp
    s, b, h, v = m.seq_length, layout.micro_batch, m.hidden_size, m.padded_vocab_size
    in_flight = min(pp - stage, micro_batches) if pp > 1 else 1
    per_micro = len(stage_blocks(m.num_layers, pp, stage)) * layer_activations(m, layout, precision)
    transient = layer_activations(m, layout, precision, "none") if layout.recompute == "full" else 0
    r = 1 / t if layout.sequence_parallel else 1
    if stage == pp - 1:
        per_micro += int(e * s * b * h * (1 + r)) + 4 * s * b * v // t
        loss_input = e * s * b * v // t + (4 * s * b * v if t == 1 and e != 4 else 0)  # the logits (+ fp32 copy)
        transient = max(transient, loss_input)
    per_micro += int(e * s * b * h * r) * ((stage < pp - 1) + (stage > 0))
    if stage == 0 and m.hidden_dropout > 0:
        per_micro += MASK_BYTES * s * b * h  # the embedding's dropout
    return Activations(in_flight * per_micro, transient)


@dataclass
class RankMemory:
    """One rank's bytes: the stage and dp rank that hold the most."""

    stage: int
    parameters: int
    states: ModelStates
    activations: Activations

    @property
    def total(self) -> int:
        return sum(self.parts().values())

    def parts(self) -> dict[str, int]:
        """The bytes at the rank's fullest moment, by kind: the activations' transient (a layer rebuilt by full
        recompute, the logits) and DeepSpeed's buffers (ZeRO 2's bucket, ZeRO 3's gathered parameters) are counted
        as never live at once, so the larger is. Buffers are their own part: counted as activations, a tiny model
        at full recompute was told its activations took ZeRO 2's 1.9 GiB bucket."""
        s, a = self.states, self.activations
        transient_peaks = a.transient >= s.buffers
        return {"weights": s.weights, "gradients": s.gradients, "optimizer": s.optimizer,
                "activations": a.kept + (a.transient if transient_peaks else 0),
                "buffers": 0 if transient_peaks else s.buffers}


def rank_memory(m: ModelConfig, layout: Layout, precision: str, micro_batches: int) -> RankMemory:
    """The fullest rank of the layout, over its pipeline stages and dp ranks."""
    best = None
    for stage in range(layout.pp):
        tensors = rank_tensors(m, layout.tp, layout.pp, stage)
        states = model_states(tensors, layout, precision)
        memory = RankMemory(stage, sum(n for n, _ in tensors), states,
                            activations(m, layout, precision, stage, micro_batches))
        if best is None or memory.total > best.total:
            best = memory
    return best
