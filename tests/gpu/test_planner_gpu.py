"""The planner's activation bytes against CUDA's allocator: one forward of gpt3-small and gpt3-xl in bf16
(flash attention), what stays allocated for the backward and the peak on the way. `make gpu-check` runs
this; without CUDA it is skipped."""

import os

import pytest
import torch

from megagpt.config import load_config
from megagpt.planner.memory import Layout, activations

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                      "model")


@pytest.mark.parametrize("name,micro_batch", [("gpt3-small", 4), ("gpt3-xl", 2)])
def test_activation_bytes_within_15_percent_of_cuda_memory(world_of_one, name, micro_batch):
    from megagpt.model.gpt import GPT, lm_loss
    from megagpt.model.layers import LayerContext
    from megagpt.parallel.rng import RNGStreams

    cfg = load_config(os.path.join(MODELS, f"{name}.yaml"), ["model.attention=dense", "train.precision=bf16"])
    m, device = cfg.model, torch.device("cuda")
    ctx = LayerContext(model=m, seed=0, tp_group=world_of_one, rng=RNGStreams(0, 0, 0, device),
                       params_dtype=torch.bfloat16)
    model = GPT(ctx).to(device=device, dtype=torch.bfloat16)
    tokens = torch.randint(0, m.vocab_size, (micro_batch, m.seq_length), device=device)
    labels = (tokens, torch.ones(micro_batch, m.seq_length, device=device))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss = lm_loss(model(tokens), labels)
    torch.cuda.synchronize()
    kept, peak = torch.cuda.memory_allocated() - before, torch.cuda.max_memory_allocated() - before
    planned = activations(m, Layout(micro_batch=micro_batch), "bf16", stage=0, micro_batches=1)
    print(f"{name}: kept {kept / 2**30:.2f} GiB (planned {planned.kept / 2**30:.2f}), peak {peak / 2**30:.2f} GiB "
          f"(planned {(planned.kept + planned.transient) / 2**30:.2f})")
    assert kept == pytest.approx(planned.kept, rel=0.15)
    assert peak == pytest.approx(planned.kept + planned.transient, rel=0.15)
    loss.backward()
