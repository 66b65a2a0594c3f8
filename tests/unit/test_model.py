import pytest
import torch
import torch.nn.functional as F

from megagpt.config import load_config
from megagpt.model.attention import Attention
from megagpt.model.gpt import GPT, lm_loss
from megagpt.model.init import fill_shard, normal, param_seed
from megagpt.model.layers import LayerContext
from megagpt.planner import parameter_count


def tiny(*overrides):
    return load_config(None, ["model.num_layers=2", "model.hidden_size=32", "model.num_heads=4", "model.seq_length=16",
                              "model.vocab_size=100", "model.make_vocab_size_divisible_by=64", *overrides]).model


def test_shards_of_a_parameter_reassemble_the_full_draw():
    full = torch.nn.Parameter(torch.empty(8, 6))
    fill_shard(full, normal(1.0), seed=7, layer="l", name="w", tp_rank=0, tp_size=1)
    for dim in (0, 1):
        shards = []
        for rank in range(2):
            shape = [8, 6]
            shape[dim] //= 2
            p = torch.nn.Parameter(torch.empty(shape))
            p.tensor_model_parallel, p.partition_dim = True, dim
            fill_shard(p, normal(1.0), seed=7, layer="l", name="w", tp_rank=rank, tp_size=2)
            shards.append(p.detach())
        torch.testing.assert_close(torch.cat(shards, dim), full.detach(), rtol=0, atol=0)
    assert param_seed(1, "a", "b") == param_seed(1, "a", "b") != param_seed(2, "a", "b")


def test_model_shape_init_and_loss(world_of_one):
    m = tiny()
    model = GPT(LayerContext(model=m, seed=3, tp_group=world_of_one))
    assert sum(p.numel() for p in model.parameters()) == parameter_count(m, padded_vocab=True)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.02 / 2, rel=0.1)  # 1/sqrt(2 * layers)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.all(model.blocks[1].ln1.weight == 1) and torch.all(model.blocks[1].mlp.fc1.bias == 0)
    again = GPT(LayerContext(model=m, seed=3, tp_group=world_of_one))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))

    tokens = torch.randint(0, 100, (2, 16))
    labels = torch.randint(0, 100, (2, 16))
    mask = torch.ones(2, 16)
    mask[1, 8:] = 0
    logits = model(tokens)
    assert logits.shape == (2, 16, 128)  # padded vocab
    per_token = F.cross_entropy(logits.reshape(-1, 128), labels.reshape(-1), reduction="none").view(2, 16)
    expected = (per_token * mask).sum() / mask.sum()
    assert lm_loss(logits, (labels, mask)).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("preset,std", [("gpt2-small", 0.01), ("gpt1", 0.02)])
def test_position_embeddings_start_as_each_papers_code_drew_them(world_of_one, preset, std):
    """GPT-2's code: positions N(0, 0.01), tokens 0.02; GPT-1's: one N(0, 0.02) matrix for both."""
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "model", f"{preset}.yaml")
    m = load_config(path, ["model.num_layers=1"]).model
    model = GPT(LayerContext(model=m, seed=3, tp_group=world_of_one))
    assert model.embedding.position_embeddings.weight.std().item() == pytest.approx(std, rel=0.01)
    assert model.embedding.word_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.01)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tp1_loss_and_gradient_equal_megatron_vocab_parallel_cross_entropy(world_of_one, dtype):
    """At tp = 1 lm_loss takes torch's fused cross entropy; it must be megatron-core's loss."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    torch.manual_seed(0)
    logits = (3 * torch.randn(2, 16, 128)).to(dtype)
    labels, mask = torch.randint(0, 100, (2, 16)), (torch.rand(2, 16) > 0.3).float()
    ours = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    loss = lm_loss(ours, (labels, mask))
    reference = (vocab_parallel_cross_entropy(theirs.float(), labels) * mask).sum() / mask.sum()
    loss.backward()
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["column", "row"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tp1_linear_equals_megatron_layer(world_of_one, kind, dtype):
    """At tp = 1 the TP layers run as F.linear (bias in the GEMM); output and gradients are megatron-core's."""
    ctx = LayerContext(model=tiny(), seed=0, tp_group=world_of_one, params_dtype=dtype)
    layer = ctx.column_linear(32, 48) if kind == "column" else ctx.row_linear(32, 48)
    torch.manual_seed(0)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(2, 5, 32, dtype=dtype)
    ours_x, theirs_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = getattr(ctx, kind)(layer, ours_x, sliced=False)
    ours.square().sum().backward()
    ours_grads = [p.grad.clone() for p in (layer.weight, layer.bias)]
    layer.zero_grad()
    theirs = layer(theirs_x)[0]
    theirs.square().sum().backward()
    # bf16: the epilogue rounds once where megatron-core rounds the product and then the sum
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    pairs = [(ours, theirs), (ours_x.grad, theirs_x.grad), *zip(ours_grads, (layer.weight.grad, layer.bias.grad))]
    for mine, megatron in pairs:
        assert ((mine.float() - megatron.float()).norm() / megatron.float().norm()).item() < tol


def test_post_ln_has_no_final_norm_and_differs(world_of_one):
    pre = GPT(LayerContext(model=tiny(), seed=3, tp_group=world_of_one))
    post = GPT(LayerContext(model=tiny("model.norm_position=post"), seed=3, tp_group=world_of_one))
    assert isinstance(post.final_norm, torch.nn.Identity)
    tokens = torch.randint(0, 100, (1, 16))
    assert not torch.allclose(pre(tokens), post(tokens))


def test_gpt3_alternating_layers_band_the_odd_ones(world_of_one):
    m = tiny("model.attention=alternating", "model.local_window=4")
    ctx = LayerContext(model=m, seed=0, tp_group=world_of_one)
    layers = [Attention(ctx, i) for i in range(4)]
    for i, layer in enumerate(layers):
        ctx.init_layer(layer, f"attn{i}", 0.2)  # a bare Attention is not initialised; its block does that
    assert [a.window for a in layers] == [None, 4, None, 4]
    x = torch.randn(1, 16, 32)
    far = x.clone()
    far[0, 0] += 10.0  # token 0 is 15 positions before the last one
    dense, banded = layers[0], layers[1]
    assert not torch.allclose(dense(x)[0, -1], dense(far)[0, -1])
    torch.testing.assert_close(banded(x)[0, -1], banded(far)[0, -1])
    assert not torch.allclose(banded(x)[0, 2], banded(far)[0, 2])


def test_token_logprobs_equal_log_softmax_without_the_vocab_padding():
    from megagpt.model.vocab_parallel import token_logprobs

    logits = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(1))
    logp, entropy = token_logprobs(logits, labels, None, vocab_size=10, with_entropy=True)
    real = torch.log_softmax(logits[..., :10], dim=-1)  # ids 10, 11 are padding: no probability
    torch.testing.assert_close(logp, real.gather(-1, labels[..., None]).squeeze(-1))
    torch.testing.assert_close(entropy, -(real.exp() * real).sum(-1))


def test_pipeline_stages_are_named_in_one_line():
    from megagpt.parallel.parallelize import stage_contents

    # 4 blocks over 2 stages, pre-LN (a final norm at index 5, the head at 6)
    assert stage_contents([0, 3, 7], 4) == "0: embedding, blocks 0-1 | 1: blocks 2-3, final norm, head"
    # post-LN (no final norm), 3 stages, one block on the middle one
    assert stage_contents([0, 2, 3, 5], 3) == "0: embedding, block 0 | 1: block 1 | 2: block 2, head"


def test_pipeline_stages_are_named_from_deepspeeds_own_partition():
    """PipelineModule's boundaries as its partitioner makes them (numpy integers), for apply_pipeline's layers."""
    from deepspeed.runtime.utils import partition_balanced

    from megagpt.parallel.parallelize import stage_contents

    blocks = [0] + [1] * 4 + [0, 0]  # embedding, 4 blocks, final norm, head: partition_method="type:TransformerBlock"
    parts = partition_balanced(weights=blocks, num_parts=2)
    assert stage_contents(parts, 4) == "0: embedding, blocks 0-1 | 1: blocks 2-3, final norm, head"
