"""GPT-3 sparse attention: the `local` band and the Sparse Transformer's `strided` pattern.

With distance d = i - j from query i to key j and width (stride) k:
  local:   query i sees key j iff 0 <= d < k                        O(T * k)
  strided: the band, plus d = k, 2k, 3k, ..., in one softmax         O(T * (k + T/k))
Neither kernel builds a T x T score or mask. Inputs and output are (B, nh, T, hs).
"""

from __future__ import annotations

import functools

import torch
import torch._dynamo  # (already imported by torch.compiler.disable below)
import torch.nn.functional as F
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, flex_attention


def sparse_attention(q, k, v, pattern: str, window: int, dropout_p: float = 0.0) -> torch.Tensor:
    # FlexAttention has no dropout and no CPU backward (torch 2.13); its Triton kernel needs hs >= 16.
    flex = q.is_cuda and dropout_p == 0.0 and q.shape[-1] >= 16
    if pattern == "strided":
        # Not one FlexAttention call: the stride columns touch every (or every other) 128x128 key block, so its
        # block sparsity would do near-dense work. Its band pass is one, joined to the class pass by log-sum-exp.
        return strided_causal_attention(q, k, v, window, dropout_p, band_kernel=flex_band if flex else None)
    if flex:
        return flex_local_attention(q, k, v, window)
    return local_causal_attention(q, k, v, window, dropout_p)


@functools.cache
def _compiled(fn):
    # Compiled on first CUDA use, once per process: eager flex_attention computes all T x T scores;
    # importing the compiler (~1.5 s) is not paid by CPU runs.
    return torch.compile(fn, dynamic=False)


@torch.compiler.disable  # under train.compile too, built once per shape rather than traced into every block
@functools.lru_cache(maxsize=32)
def band_block_mask(t: int, window: int, device: torch.device, block: int = 128) -> BlockMask:
    """FlexAttention's BlockMask for the local band, from block arithmetic.

    Written by hand because create_block_mask evaluates mask_mod at all T x T positions: dense work,
    and a compile per T to make it fast. Here each (query block, key block) tile is classed from its
    index ranges alone, O((T/block)^2) integers; the result equals create_block_mask's
    (tests/unit/test_attention.py). Default 128-wide blocks: with a window
    that is a multiple of 128 the band's inner tiles are full and skip mask_mod.
    """
    n = -(-t // block)
    lo = torch.arange(n, device=device) * block
    hi = torch.clamp(lo + block, max=t) - 1  # the last block may be short
    q_lo, q_hi, k_lo, k_hi = lo.view(n, 1), hi.view(n, 1), lo.view(1, n), hi.view(1, n)
    # The tile's distances q - k fill the integer range [q_lo - k_hi, q_hi - k_lo].
    touched = (q_hi >= k_lo) & (q_lo - k_hi < window)
    whole = lo + block <= t  # a short block is never full: the kernel applies mask_mod to bound it
    full = (q_lo >= k_lo + block - 1) & (q_lo + block - 1 - k_lo < window) & whole.view(n, 1) & whole.view(1, n)

    def rows(tiles):  # (count, indices) per query block, the listed key blocks first and ascending
        order = torch.argsort((~tiles).to(torch.int8), dim=-1, stable=True)
        return tiles.sum(-1).to(torch.int32)[None, None], order.to(torch.int32)[None, None]

    def in_band(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    # No kernel_options: ROWS_GUARANTEED_SAFE and BLOCKS_ARE_CONTIGUOUS do not hold blockwise for a
    # band (a row's far-edge tile can be all masked; its partial tiles are not adjacent).
    return BlockMask.from_kv_blocks(*rows(touched & ~full), *rows(full), BLOCK_SIZE=block, mask_mod=in_band,
                                    seq_lengths=(t, t))


FLEX_BLOCK = 128
# Shapes (batch, padded length) the kernel is compiled for before dynamo gives up on it. Past its default, 8,
# dynamo runs flex_attention eagerly, which materialises every T x T score: PPO's rollouts and eval pass many
# lengths, and a few iterations in, the local layers became dense and slower than dense attention.
FLEX_SHAPES = 128


def flex_local_attention(q, k, v, window: int) -> torch.Tensor:
    return _flex_band(q, k, v, window, with_lse=False)


def flex_band(q, k, v, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The band's output and each query's log-sum-exp over its scores, (B, nh, T) fp32: strided's band pass."""
    return _flex_band(q, k, v, window, with_lse=True)


def _flex_band(q, k, v, window: int, with_lse: bool):
    # Lengths padded to whole 128-blocks, so that eval's and PPO's many lengths share fewer shapes, each compiled
    # once (dynamic=False). Causal: no real query sees a padded key, and the padded queries' rows are dropped.
    t = q.shape[2]
    pad = -t % FLEX_BLOCK
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    block_mask = band_block_mask(t + pad, window, q.device, FLEX_BLOCK)
    # The log-sum-exp is differentiable (its gradient enters the kernel's backward); natural log, as logsumexp.
    aux = AuxRequest(lse=True) if with_lse else None
    if torch.compiler.is_compiling():  # inside a compiled block (train.compile): compiled with the block
        out = flex_attention(q, k, v, block_mask=block_mask, return_aux=aux)
    else:
        with torch._dynamo.config.patch(recompile_limit=FLEX_SHAPES):
            out = _compiled(flex_attention)(q, k, v, block_mask=block_mask, return_aux=aux)
    if with_lse:
        out, aux = out
        return out[:, :, :t], aux.lse[:, :, :t]
    return out[:, :, :t] if pad else out


def attention_mask(q_positions: torch.Tensor, k_positions: torch.Tensor, pattern: str | None,
                   window: int | None) -> torch.Tensor:
    """(Tq, Tk) True where a query may see a key: causal, and the sparse pattern's distances when given.

    An explicit mask, for decoding with a KV cache (a few queries against the cached keys).
    """
    d = q_positions.view(-1, 1) - k_positions.view(1, -1)  # distance from query to key
    allowed = d >= 0
    if pattern is None or window is None:
        return allowed
    band = d < window
    return allowed & (band | (d % window == 0) if pattern == "strided" else band)


def _blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, nh, T, hs) -> (B, nh, n, size, hs), zero-padded at the end to n * size positions."""
    b, h, t, d = x.shape
    n = -(-t // size)
    return F.pad(x, (0, 0, 0, n * size - t)).view(b, h, n, size, d)


def _with_previous_block(x: torch.Tensor) -> torch.Tensor:
    """(B, nh, n, s, hs) -> (B, nh, n, 2s, hs): each block's predecessor (zeros for block 0), then itself."""
    return torch.cat([F.pad(x, (0, 0, 0, 0, 1, 0))[:, :, :-1], x], dim=3)


def _band_mask(n: int, size: int, device) -> torch.Tensor:
    """(n, s, 2s): True where query qi of block b may see key kj of `_with_previous_block`, 0 <= d < s."""
    qi = torch.arange(size, device=device).view(size, 1)
    kj = torch.arange(2 * size, device=device).view(1, 2 * size)
    band = (kj > qi) & (kj <= qi + size)  # distance size + qi - kj in [0, size)
    first = band & (kj >= size)  # block 0 has no previous block
    return torch.stack([first] + [band] * (n - 1))


def local_causal_attention(q, k, v, window: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Query i sees keys i-window+1 .. i: query block b needs only key blocks b-1 and b."""
    t = q.shape[2]
    q, k, v = (_blocks(x, window) for x in (q, k, v))  # (B, nh, n, w, hs)
    mask = _band_mask(q.shape[2], window, q.device)
    out = F.scaled_dot_product_attention(q, _with_previous_block(k), _with_previous_block(v), attn_mask=mask,
                                         dropout_p=dropout_p)  # (B, nh, n, w, hs)
    return out.flatten(2, 3)[:, :, :t]


def strided_causal_attention(q, k, v, stride: int, dropout_p: float = 0.0, band_kernel=None) -> torch.Tensor:
    """Query i sees key j iff 0 <= i-j < stride or i-j is a positive multiple of stride; one softmax.

    The padded sequence is an (n, stride) grid: position a*stride + r is block a, residue class r.
    Band pass: each query block against its previous and own key block (distances 0 .. stride-1).
    Class pass: within class r, block a >= 1 sees blocks 0 .. a-1 (distances stride, 2*stride, ...).
    The two score sets are disjoint parts of each softmax row, joined exactly by its log-sum-exp.

    band_kernel: (q, k, v, window) -> (the band's output, its log-sum-exp (B, nh, T)), for the band pass (FlexAttention
    on CUDA, flex_band), weighted into the joint softmax as ring attention joins its chunks. Without one, the band's
    scores are formed here (B, nh, n, s, 2s), with attention dropout on the joint probabilities.
    """
    if band_kernel is not None and dropout_p > 0:
        raise ValueError("strided attention's band kernel has no dropout")
    t, scale = q.shape[2], q.shape[-1] ** -0.5
    # softmax statistics in at least fp32; not torch.promote_types, which Dynamo (torch 2.11, CUDA) handed a
    # torch.Size under train.compile
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    if band_kernel is not None:
        band_out, band_lse = band_kernel(q, k, v, stride)  # (B, nh, T, hs), (B, nh, T)
    q, k, v = (_blocks(x, stride) for x in (q, k, v))  # (B, nh, n, s, hs)
    n = q.shape[2]

    if band_kernel is None:
        band = (q @ _with_previous_block(k).transpose(-2, -1) * scale).to(acc)  # (B, nh, n, s, 2s)
        band = band.masked_fill(~_band_mask(n, stride, q.device), float("-inf"))
        band_lse = band.logsumexp(-1)  # (B, nh, n, s)
    else:  # onto the grid; the padded queries' rows (dropped below) get lse 0, finite
        band_out = _blocks(band_out, stride)
        band_lse = F.pad(band_lse.to(acc), (0, n * stride - t)).view(q.shape[:-1])
    # class r as a sequence: queries of blocks 1..n-1 against keys of blocks 0..n-2, causal incl. diagonal
    qc, kc, vc = (x.transpose(2, 3) for x in (q[:, :, 1:], k[:, :, :-1], v[:, :, :-1]))  # (B, nh, s, n-1, hs)
    cls = (qc @ kc.transpose(-2, -1) * scale).to(acc)  # (B, nh, s, n-1, n-1)
    earlier = torch.ones(n - 1, n - 1, dtype=torch.bool, device=q.device).tril()
    cls = cls.masked_fill(~earlier, float("-inf"))

    # Every class row keeps its diagonal, so no row is all -inf and no gradient turns NaN.
    cls_lse = F.pad(cls.logsumexp(-1), (1, 0), value=float("-inf")).transpose(2, 3)  # (B, nh, n, s); block 0: none
    lse = torch.logaddexp(band_lse, cls_lse)  # (B, nh, n, s)
    p_cls = torch.exp(cls - lse[:, :, 1:].transpose(2, 3).unsqueeze(-1))
    if band_kernel is None:
        p_band = torch.exp(band - lse.unsqueeze(-1))
        if dropout_p > 0:
            p_band, p_cls = F.dropout(p_band, dropout_p), F.dropout(p_cls, dropout_p)
        out = p_band.to(v.dtype) @ _with_previous_block(v)  # (B, nh, n, s, hs)
    else:  # the band's share of each row's probability mass
        out = (band_out.to(acc) * torch.exp(band_lse - lse).unsqueeze(-1)).to(v.dtype)

    out_cls = (p_cls.to(v.dtype) @ vc).transpose(2, 3)  # (B, nh, n-1, s, hs)
    out = out + F.pad(out_cls, (0, 0, 0, 0, 1, 0))
    return out.flatten(2, 3)[:, :, :t]
