import pytest
import torch
import torch.nn.functional as F

from megagpt.model.attention import local_causal_attention


def banded_reference(q, k, v, window):
    t = q.shape[2]
    i = torch.arange(t).view(t, 1)
    j = torch.arange(t).view(1, t)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=(j <= i) & (i - j < window))


@pytest.mark.parametrize("t,window", [(64, 16), (50, 16), (16, 16), (7, 4), (33, 1)])
def test_local_attention_equals_masked_dense_forward_and_backward(t, window):
    gen = torch.Generator().manual_seed(t * 100 + window)
    q, k, v = (torch.randn(2, 3, t, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ours = local_causal_attention(q, k, v, window)
    ref = banded_reference(q, k, v, window)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_local_attention_really_is_local():
    q, k, v = (torch.randn(1, 1, 32, 4) for _ in range(3))
    v2 = v.clone()
    v2[:, :, :8] += 100.0  # tokens 0..7 are out of reach of query 31 with a window of 16
    torch.testing.assert_close(local_causal_attention(q, k, v, 16)[:, :, 31], local_causal_attention(q, k, v2, 16)[:, :, 31])
