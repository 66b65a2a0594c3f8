"""Activation recompute changes memory, not math: the same loss and gradients, dropout masks included."""

import pytest
import torch

from megagpt.config import load_config
from megagpt.model.gpt import GPT, lm_loss
from megagpt.model.layers import LayerContext
from megagpt.parallel.parallelize import apply_activation_checkpointing
from megagpt.parallel.rng import RNGStreams


def loss_and_grads(tp_group, mode: str, attention: list[str]):
    cfg = load_config(None, ["model.num_layers=2", "model.hidden_size=32", "model.num_heads=4", "model.seq_length=16",
                             "model.vocab_size=100", "model.make_vocab_size_divisible_by=64",
                             "model.hidden_dropout=0.1", "model.attention_dropout=0.1", *attention]).model
    rng = RNGStreams(7, tp_rank=0, pp_rank=0, device=torch.device("cpu"))
    gpt = GPT(LayerContext(model=cfg, seed=3, tp_group=tp_group, rng=rng)).train()
    apply_activation_checkpointing(gpt, mode)
    tokens = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = lm_loss(gpt(tokens[:, :-1]), (tokens[:, 1:], torch.ones(2, 15)))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in gpt.named_parameters()}


@pytest.mark.parametrize("mode", ["selective", "full"])
@pytest.mark.parametrize("attention", [[], ["model.attention=alternating", "model.local_window=4"]],
                         ids=["dense", "local"])
def test_recompute_gives_the_same_loss_and_gradients_with_dropout(world_of_one, mode, attention):
    loss, grads = loss_and_grads(world_of_one, "none", attention)
    again, regrads = loss_and_grads(world_of_one, mode, attention)
    assert again == loss
    for name, grad in grads.items():
        torch.testing.assert_close(regrads[name], grad, rtol=0, atol=0, msg=name)


def test_recompute_flags_land_on_the_blocks(world_of_one):
    cfg = load_config(None, ["model.num_layers=2", "model.hidden_size=32", "model.num_heads=4",
                             "model.vocab_size=100"]).model
    gpt = GPT(LayerContext(model=cfg, seed=3, tp_group=world_of_one))
    apply_activation_checkpointing(gpt, "full")
    assert all(b.recompute and not b.attn.recompute_core for b in gpt.blocks)
    apply_activation_checkpointing(gpt, "selective")
    assert all(b.attn.recompute_core and not b.recompute for b in gpt.blocks)


def test_random_streams_saved_on_another_kind_of_device_are_left_fresh_not_set():
    """A checkpoint saved on CUDA and resumed on CPU (or the reverse) stopped the resume: a CUDA generator state
    (16 bytes) cannot set a CPU generator (5056 bytes). The streams record their device; another one starts fresh."""
    import random

    from megagpt.train.checkpoint import restore_rng, rng_state

    cpu = torch.device("cpu")
    streams = RNGStreams(seed=1, tp_rank=0, pp_rank=0, device=cpu)
    state = rng_state(streams.state_dict(), cpu)
    assert state["device"] == "cpu" and "cuda" not in state  # a CPU rank on a GPU host does not touch CUDA
    expected = random.random()
    assert restore_rng(state, cpu) is state["streams"] and random.random() == expected
    from_gpu = {**state, "device": "cuda", "streams": {"streams": {}, "current": torch.zeros(16, dtype=torch.uint8)},
                "cuda": torch.zeros(16, dtype=torch.uint8)}
    assert restore_rng(from_gpu, cpu) is None and random.random() == expected  # the process generators still restored
    legacy = {k: v for k, v in state.items() if k != "device"}  # saved before the device was recorded
    assert restore_rng(legacy, cpu) is state["streams"]
