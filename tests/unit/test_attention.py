import functools

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from megagpt.config import load_config
from megagpt.model.gpt import GPT
from megagpt.model.layers import LayerContext
from megagpt.model.sparse_attention import (band_block_mask, local_causal_attention, sparse_attention,
                                            strided_causal_attention)
from megagpt.planner import attention_span

SHAPES = [(64, 16), (50, 16), (16, 16), (7, 4), (33, 1), (5, 8), (100, 7)]  # T multiple of k or not, T <= k, k = 1


def sparse_mask(t, window, pattern, device=None):
    """The explicit (T, T) mask the kernels must equal: True where query i may see key j."""
    d = torch.arange(t, device=device).view(t, 1) - torch.arange(t, device=device).view(1, t)
    band = (d >= 0) & (d < window)
    return band | ((d >= window) & (d % window == 0)) if pattern == "strided" else band


def banded_reference(q, k, v, window, pattern="local"):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=sparse_mask(q.shape[2], window, pattern, q.device))


def dense_band(q, k, v, window):
    """The band pass as explicit scores, (output, log-sum-exp): flex_band's contract, differentiable on CPU."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~sparse_mask(q.shape[2], window, "local", q.device), float("-inf"))
    lse = scores.logsumexp(-1)
    return torch.exp(scores - lse.unsqueeze(-1)) @ v, lse


KERNELS = {
    "local": local_causal_attention,
    "strided": strided_causal_attention,
    # CUDA's form: the band from a kernel that also returns its log-sum-exp, joined to the class pass by it
    "strided-joined": lambda q, k, v, w: strided_causal_attention(q, k, v, w, band_kernel=dense_band),
    "local-entry": lambda q, k, v, w: sparse_attention(q, k, v, "local", w),
    "strided-entry": lambda q, k, v, w: sparse_attention(q, k, v, "strided", w),
}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("t,window", SHAPES)
@pytest.mark.parametrize("name", KERNELS)
def test_sparse_kernels_equal_masked_dense_forward_and_backward(name, t, window, dtype, tol):
    gen = torch.Generator().manual_seed(t * 100 + window)
    q, k, v = (torch.randn(2, 3, t, 8, generator=gen, dtype=dtype, requires_grad=True) for _ in range(3))
    ours = KERNELS[name](q, k, v, window)
    ref = banded_reference(q, k, v, window, pattern=name.split("-")[0])
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    grad = torch.randn(ours.shape, generator=gen, dtype=dtype)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_local_attention_really_is_local():
    q, k, v = (torch.randn(1, 1, 32, 4) for _ in range(3))
    v2 = v.clone()
    v2[:, :, :8] += 100.0  # tokens 0..7 are out of reach of query 31 with a window of 16
    torch.testing.assert_close(local_causal_attention(q, k, v, 16)[:, :, 31],
                               local_causal_attention(q, k, v2, 16)[:, :, 31])


def reaches(kernel, distance, t=40, window=8):
    q, k, v = (torch.randn(1, 1, t, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    far = v.clone()
    far[:, :, t - 1 - distance] += 100.0
    return not torch.allclose(kernel(q, k, v, window)[:, :, -1], kernel(q, k, far, window)[:, :, -1])


def test_strided_reaches_multiples_of_the_stride_only():
    assert [reaches(strided_causal_attention, d) for d in (7, 8, 9, 15, 16, 17, 24)] == [True, True, False, False,
                                                                                        True, False, True]
    assert [reaches(local_causal_attention, d) for d in (7, 8, 16)] == [True, False, False]


class LargestTensor(TorchDispatchMode):
    """Records the most elements any op (forward or backward) produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor):
                self.numel = max(self.numel, x.numel())
        return out


@pytest.mark.parametrize("kernel", [strided_causal_attention, local_causal_attention])
def test_sparse_kernels_never_build_t_by_t(kernel):
    t, window = 512, 32
    q, k, v = (torch.randn(1, 1, t, 16, requires_grad=True) for _ in range(3))
    with LargestTensor() as ours:
        kernel(q, k, v, window).sum().backward()
    with LargestTensor() as dense:
        banded_reference(q, k, v, window, "strided").sum().backward()
    assert dense.numel >= t * t  # the recorder sees the dense score matrix
    assert ours.numel < t * t and ours.numel <= 2 * t * (window + t // window)


@pytest.mark.parametrize("t,window", [(1024, 128), (1000, 256), (300, 100), (64, 1), (129, 128), (4096, 200)])
def test_band_block_mask_equals_create_block_mask(t, window):
    """The GPU `local` kernel's BlockMask, made from block arithmetic, is create_block_mask's tile for tile."""
    from torch.nn.attention.flex_attention import create_block_mask

    def in_band(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    ref, ours = create_block_mask(in_band, None, None, t, t, device="cpu"), band_block_mask(t, window, "cpu")
    assert ours.seq_lengths == ref.seq_lengths and ours.BLOCK_SIZE == ref.BLOCK_SIZE
    for kind in ("kv", "full_kv", "q", "full_q"):
        count, ref_count = getattr(ours, f"{kind}_num_blocks"), getattr(ref, f"{kind}_num_blocks")
        assert torch.equal(count, ref_count), kind
        listed, ref_listed = getattr(ours, f"{kind}_indices"), getattr(ref, f"{kind}_indices")
        for row, n in enumerate(ref_count[0, 0].tolist()):
            assert torch.equal(listed[0, 0, row, :n], ref_listed[0, 0, row, :n]), (kind, row)
    assert torch.equal(ours.to_dense(), ref.to_dense())


def test_strided_dropout_is_unbiased_on_the_joint_probabilities():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 20, 4, generator=gen).expand(4000, 1, 20, 4) for _ in range(3))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        dropped = strided_causal_attention(q, k, v, 4, dropout_p=0.5)  # 4000 independent draws of the same input
    assert not torch.allclose(dropped[0], dropped[1])
    torch.testing.assert_close(dropped.mean(0), strided_causal_attention(q[:1], k[:1], v[:1], 4)[0], rtol=0, atol=0.05)


@pytest.mark.parametrize("pattern,span", [("local", 8), ("strided", 8 + 13)])
def test_planner_counts_the_keys_a_sparse_query_sees(pattern, span):
    m = load_config(None, ["model.attention=alternating", f"model.sparse_pattern={pattern}", "model.local_window=8",
                           "model.seq_length=100"]).model
    assert [attention_span(m, i) for i in range(2)] == [100, span]
    assert sparse_mask(100, 8, pattern).sum(1).max() <= span


def test_gpt_with_strided_sparse_layers_trains(world_of_one):
    m = load_config(None, ["model.num_layers=2", "model.hidden_size=32", "model.num_heads=4", "model.seq_length=32",
                           "model.vocab_size=100", "model.make_vocab_size_divisible_by=64", "model.attention=alternating",
                           "model.sparse_pattern=strided", "model.local_window=4"]).model
    model = GPT(LayerContext(model=m, seed=3, tp_group=world_of_one))
    attn = model.blocks[1].attn
    assert (attn.window, attn.pattern) == (4, "strided") and model.blocks[0].attn.window is None
    logits = model(torch.randint(0, 100, (2, 32)))
    assert logits.shape == (2, 32, 128)
    logits.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("t,window", [(300, 100), (129, 128), (256, 40)])
def test_flex_local_attention_pads_to_whole_blocks_and_equals_the_band(monkeypatch, t, window):
    """The CUDA kernel's wrapper pads T to a multiple of 128 (one compiled shape for many lengths); run here
    with flex_attention eager, whose CPU forward is its reference math, against the block-local form."""
    from megagpt.model import sparse_attention

    shapes = []

    def eager(fn):
        return lambda q, k, v, **kw: shapes.append(q.shape[2]) or fn(q, k, v, **kw)

    monkeypatch.setattr(sparse_attention, "_compiled", eager)
    g = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(2, 3, t, 16, generator=g, dtype=torch.float64) for _ in range(3))
    out = sparse_attention.flex_local_attention(q, k, v, window)
    assert shapes == [-(-t // 128) * 128] and out.shape == q.shape
    assert torch.allclose(out, local_causal_attention(q, k, v, window), atol=1e-12)


@pytest.mark.parametrize("t,window", [(300, 100), (256, 40), (130, 128)])
def test_flex_band_gives_strided_its_band_and_log_sum_exp(monkeypatch, t, window):
    """strided's CUDA band pass (flex_band: FlexAttention's output and log-sum-exp, padded to whole blocks), run with
    flex_attention eager, whose CPU forward is its reference math: the band's natural-log log-sum-exp, and
    strided attention through it equal to the explicit mask's. (FlexAttention has no CPU backward; the join's
    gradients are checked through dense_band above, and the kernel's in tests/gpu.)"""
    from megagpt.model import sparse_attention

    monkeypatch.setattr(sparse_attention, "_compiled", lambda fn: fn)
    g = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(2, 3, t, 16, generator=g, dtype=torch.float64) for _ in range(3))
    out, lse = sparse_attention.flex_band(q, k, v, window)
    ref_out, ref_lse = dense_band(q, k, v, window)
    assert lse.shape == (2, 3, t) and lse.dtype == torch.float64
    assert torch.allclose(out, ref_out, atol=1e-12) and torch.allclose(lse, ref_lse, atol=1e-12)
    joined = strided_causal_attention(q, k, v, window, band_kernel=sparse_attention.flex_band)
    assert torch.allclose(joined, banded_reference(q, k, v, window, "strided"), atol=1e-12)


def test_flex_local_attention_stays_compiled_for_many_shapes(monkeypatch):
    """Each (batch, padded length) is a compile of the CUDA kernel; past dynamo's default limit, 8, dynamo ran
    flex_attention eagerly, which materialises every T x T score (PPO and eval pass many lengths). Compiled here
    with dynamo's eager backend, which runs each graph it is given: 12 shapes, 12 graphs, none left to eager."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    from megagpt.model import sparse_attention

    counter = CompileCounter()
    monkeypatch.setattr(sparse_attention, "_compiled", functools.cache(
        lambda fn: torch.compile(fn, backend=counter, dynamic=False)))
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n in range(1, 13):
            batch, length = 1 + n % 2, 128 * (n + 1) // 2 - 3
            q = torch.randn(batch, 2, length, 16, generator=g)
            assert torch.allclose(sparse_attention.flex_local_attention(q, q, q, 64),
                                  local_causal_attention(q, q, q, 64), atol=1e-5)
    torch._dynamo.reset()
    assert counter.frame_count == 12
