"""What every layer needs to know about its place in the layout.

Model code receives this explicitly rather than reading megatron-core's global
parallel state, so the RLHF roles can each build models on their own groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megagpt.config import ModelConfig
from megagpt.model.init import constant, fill_shard, normal
from megagpt.parallel.rng import RNGStreams


@dataclass
class LayerContext:
    model: ModelConfig
    seed: int
    tp_group: Optional[dist.ProcessGroup]
    tp_rank: int = 0
    tp_size: int = 1
    rng: Optional[RNGStreams] = None
    params_dtype: torch.dtype = torch.float32
    # False: leave weights unfilled (a model built on the meta device to be counted, never run)
    initialize: bool = True
    # parallel.sequence_parallel: between the TP matmuls each rank holds a slice of the sequence
    sequence_parallel: bool = False

    def column(self, layer, x: torch.Tensor, sliced: bool) -> torch.Tensor:
        """A column-parallel layer on x, which is a sequence slice when `sliced` (megagpt.parallel.sequence_parallel)."""
        if sliced:
            from megagpt.parallel.sequence_parallel import column_linear

            return column_linear(layer, x, self.tp_group)
        return linear(layer, x, self.tp_size)

    def row(self, layer, x: torch.Tensor, sliced: bool) -> torch.Tensor:
        """A row-parallel layer on x; its output is a sequence slice when `sliced`."""
        if sliced:
            from megagpt.parallel.sequence_parallel import row_linear

            return row_linear(layer, x, self.tp_group)
        return linear(layer, x, self.tp_size)

    def megatron_config(self):
        from megatron.core import ModelParallelConfig

        # Initialisation is ours (layout-independent), so megatron-core must not draw weights.
        return ModelParallelConfig(tensor_model_parallel_size=self.tp_size, use_cpu_initialization=True,
                                   perform_initialization=False, params_dtype=self.params_dtype,
                                   gradient_accumulation_fusion=False, sequence_parallel=False)

    def column_linear(self, in_features: int, out_features: int):
        from megatron.core.tensor_parallel import ColumnParallelLinear

        layer = ColumnParallelLinear(in_features, out_features, config=self.megatron_config(), init_method=no_init,
                                     bias=True, gather_output=False, tp_group=self.tp_group)
        return mark_sharded(layer, dim=0)

    def row_linear(self, in_features: int, out_features: int):
        from megatron.core.tensor_parallel import RowParallelLinear

        layer = RowParallelLinear(in_features, out_features, config=self.megatron_config(), init_method=no_init,
                                  bias=True, input_is_parallel=True, skip_bias_add=False, tp_group=self.tp_group)
        return mark_sharded(layer, dim=1)

    def vocab_embedding(self, vocab_size: int, hidden_size: int):
        from megatron.core.tensor_parallel import VocabParallelEmbedding

        layer = VocabParallelEmbedding(vocab_size, hidden_size, init_method=no_init, config=self.megatron_config(),
                                       tp_group=self.tp_group)
        return mark_sharded(layer, dim=0)

    def init_layer(self, module: nn.Module, layer: str, weight_std: float, std_overrides: dict | None = None) -> None:
        """Weights ~ N(0, std) (per-name overrides), biases 0, LayerNorm gains 1."""
        if not self.initialize:
            return
        std_overrides = std_overrides or {}
        norms = {name for name, m in module.named_modules() if isinstance(m, nn.LayerNorm)}
        for name, param in module.named_parameters():
            owner, _, kind = name.rpartition(".")
            if owner in norms:
                init = constant(1.0 if kind == "weight" else 0.0)
            elif kind == "bias":
                init = constant(0.0)
            else:
                init = normal(std_overrides.get(name, weight_std))
            fill_shard(param, init, seed=self.seed, layer=layer, name=name, tp_rank=self.tp_rank, tp_size=self.tp_size)


def linear(layer, x: torch.Tensor, tp_size: int) -> torch.Tensor:
    """A megatron-core Column/RowParallelLinear on x (not sequence-parallel).

    At tp = 1 the layer is a plain linear map: F.linear adds the bias in the GEMM's epilogue, where
    megatron-core's autograd function adds it in a pass of its own over the output.
    """
    if tp_size == 1:
        return F.linear(x, layer.weight, layer.bias)
    return layer(x)[0]


def mark_sharded(layer: nn.Module, dim: int) -> nn.Module:
    """Tag the weight as a TP shard along `dim`: megatron-core does so only when it initialises weights itself."""
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    set_tensor_model_parallel_attributes(layer.weight, is_parallel=True, dim=dim, stride=1)
    return layer


def no_init(weight: torch.Tensor) -> None:
    """Placeholder for megatron-core's init hook; weights are filled by LayerContext.init_layer."""
