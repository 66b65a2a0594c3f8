"""Sizes and costs of a model config: parameter count and training FLOPs per token.

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
