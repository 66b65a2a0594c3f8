"""Sizes and costs of a model config: parameter count, the tensors one rank of a layout holds
(checked against the model built on the meta device), and training FLOPs per token.

FLOPs (the MFU numerator): each matmul weight costs 6 FLOPs per token (2 forward, 4
backward), the output head included; attention scores and their weighted sum cost
12 * hidden * span per token and layer, where span is the sequence length for dense
layers (causal masking not discounted, as Megatron-LM and PaLM count) and, for sparse
layers, the keys a query sees: the band width k for `local`, k + ceil(T/k) for `strided`
(the band plus one key per stride).
"""

from __future__ import annotations

import math

from megagpt.config import ModelConfig


def parameter_count(m: ModelConfig, padded_vocab: bool = False) -> int:
    h, f = m.hidden_size, m.ffn_size
    vocab = m.padded_vocab_size if padded_vocab else m.vocab_size
    per_layer = (4 * h * h + 4 * h) + (2 * h * f + f + h) + 4 * h  # attention, MLP, two LayerNorms
    final_norm = 2 * h if m.norm_position == "pre" else 0
    return vocab * h + m.seq_length * h + m.num_layers * per_layer + final_norm


def attention_span(m: ModelConfig, layer_index: int) -> int:
    t, k = m.seq_length, m.local_window
    if not m.is_local_layer(layer_index) or k >= t:
        return t
    return k + math.ceil(t / k) if m.sparse_pattern == "strided" else k


def training_flops_per_token(m: ModelConfig) -> float:
    h, f = m.hidden_size, m.ffn_size
    matmul_weights = m.num_layers * (4 * h * h + 2 * h * f) + m.padded_vocab_size * h
    attention = sum(12 * h * attention_span(m, i) for i in range(m.num_layers))
    return 6.0 * matmul_weights + attention


# ---------------------------------------------------------------- parameters per rank


def stage_blocks(num_layers: int, pp: int, stage: int) -> range:
    """The transformer blocks of a pipeline stage: L / pp consecutive ones (megagpt.parallel.parallelize)."""
    per = num_layers // pp
    return range(stage * per, (stage + 1) * per)


def rank_tensors(m: ModelConfig, tp: int, pp: int, stage: int) -> list[tuple[int, int]]:
    """(numel, ndim) of every parameter one rank of pipeline stage `stage` holds at tensor parallel size
    tp, in the order the module registers them (ZeRO flattens and partitions them in that order).

    Column-parallel weights and biases (qkv, fc1) and the vocabulary rows are split over tp,
    row-parallel weights (proj, fc2) too; their biases and the LayerNorms are replicated. Stage 0
    holds the embedding; the last stage the final norm (pre-LN) and, when pp > 1, its own copy of
    the tied embedding (DeepSpeed's TiedLayerSpec, registered first), position embeddings included.
    """
    h, f = m.hidden_size, m.ffn_size
    norm = [(h, 1), (h, 1)]
    block = (norm + [(3 * h * h // tp, 2), (3 * h // tp, 1), (h * h // tp, 2), (h, 1)] + norm
             + [(f * h // tp, 2), (f // tp, 1), (h * f // tp, 2), (h, 1)])
    embedding = [(m.padded_vocab_size // tp * h, 2), (m.seq_length * h, 2)]
    tensors = embedding if stage == 0 or (stage == pp - 1 and pp > 1) else []
    tensors = tensors + block * len(stage_blocks(m.num_layers, pp, stage))
    if stage == pp - 1 and m.norm_position == "pre":
        tensors = tensors + norm
    return tensors


def rank_parameters(m: ModelConfig, tp: int, pp: int, stage: int) -> int:
    """Parameters one rank of pipeline stage `stage` holds at tensor parallel size tp (rank_tensors)."""
    return sum(numel for numel, _ in rank_tensors(m, tp, pp, stage))


class _CountingGroup:
    """What megatron-core's TP layers ask of their group while being built (its size and this rank's
    place), so one rank of a large layout can be built alone on the meta device."""

    def __init__(self, size: int, rank: int):
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


def build_rank_on_meta(m: ModelConfig, tp: int, pp: int, stage: int, tp_rank: int = 0) -> list:
    """The modules one rank of (tp, pp) holds, built on the meta device: shapes without memory.
    Needs an initialised torch.distributed world (of any size) for megatron-core to read the group."""
    import torch

    from megagpt.model.block import FinalNorm, TransformerBlock
    from megagpt.model.embedding import Embedding
    from megagpt.model.layers import LayerContext

    ctx = LayerContext(model=m, seed=0, tp_group=_CountingGroup(tp, tp_rank), tp_rank=tp_rank, tp_size=tp,
                       initialize=False)
    with torch.device("meta"):
        modules = [Embedding(ctx)] if stage == 0 else []
        modules += [TransformerBlock(ctx, i) for i in stage_blocks(m.num_layers, pp, stage)]
        if stage == pp - 1:
            modules += [FinalNorm(ctx)] if m.norm_position == "pre" else []
            modules += [Embedding(ctx)] if pp > 1 else []
    return modules
