"""CUDA paths of the sparse kernels (FlexAttention's band, alone and as strided's band pass) against dense masked SDPA."""

import pytest
import torch

from megagpt.model.sparse_attention import sparse_attention
from tests.unit.test_attention import banded_reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def ieee_fp32():
    # TF32 would make both sides differ by ~1e-3; FlexAttention reads this setting when it compiles.
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


def qkv(t, dtype, head_dim=64, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(2, 4, t, head_dim, generator=gen, device="cuda", dtype=dtype, requires_grad=True)
            for _ in range(3)]


# FlexAttention (head_dim >= 16, no dropout) serves `local` and strided's band pass (its log-sum-exp joins the class
# pass, and its gradient enters the kernel's backward); head_dim 8 and dropout take the forms written out in torch.
# FlexAttention's tolerance is atol 1e-4: the Triton kernel's online softmax works in exp2 on rescaled scores and
# sums dK/dV over up to `window` queries in another order than the dense reference.
@pytest.mark.parametrize("pattern,head_dim,atol", [("local", 64, 1e-4), ("local", 8, 1e-5), ("strided", 64, 1e-4),
                                                   ("strided", 8, 1e-5)])
@pytest.mark.parametrize("t,window", [(1024, 128), (1000, 256), (300, 100), (64, 1)])
def test_cuda_kernels_equal_masked_dense_fp32(pattern, head_dim, atol, t, window):
    q, k, v = qkv(t, torch.float32, head_dim)
    ours = sparse_attention(q, k, v, pattern, window)
    ref = banded_reference(q, k, v, window, pattern)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=atol)
    grad = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("pattern", ["local", "strided"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_cuda_kernels_run_in_bf16(pattern, dropout_p):
    q, k, v = qkv(2048, torch.bfloat16)
    out = sparse_attention(q, k, v, pattern, 256, dropout_p)
    out.float().square().sum().backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
    if dropout_p == 0.0:
        ref = banded_reference(*(x.detach().float() for x in (q, k, v)), 256, pattern)
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)  # bf16 keeps 8 mantissa bits
