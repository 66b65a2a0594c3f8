"""Sparse attention speed: forward+backward ms of dense causal SDPA, `local` and `strided` per sequence length.

    python benchmarks/attention.py [--device cpu|cuda] [--seq 2048 8192 16384] [--batch B] [--heads H]
                                   [--head-dim D] [--window 256] [--dtype fp32|bf16|fp16] [--repeats N]
                                   [--skip-dense-above T]

Each kernel runs through megagpt.model.sparse_attention's entry point, as the model calls it (on CUDA
`local` is FlexAttention, compiled during warm-up). A time is the median of --repeats runs after
--warmup runs; speed-up = dense ms / kernel ms on the same row. CPU defaults (batch 1, 2 heads, fp32)
keep T=16384 to about a minute on 2 cores; dense is the slow one there, hence --skip-dense-above.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megagpt.model.sparse_attention import sparse_attention  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def kernels(window: int) -> dict:
    return {
        "dense": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "local": lambda q, k, v: sparse_attention(q, k, v, "local", window),
        "strided": lambda q, k, v: sparse_attention(q, k, v, "strided", window),
    }


def fwd_bwd_ms(fn, q, k, v, warmup: int, repeats: int) -> float:
    grad = torch.randn_like(q)
    sync = torch.cuda.synchronize if q.is_cuda else (lambda: None)

    def step():
        for x in (q, k, v):
            x.grad = None
        fn(q, k, v).backward(grad)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seq", type=int, nargs="+", default=[2048, 8192, 16384])
    parser.add_argument("--batch", type=int, help="default: 1 on CPU, 4 on CUDA")
    parser.add_argument("--heads", type=int, help="default: 2 on CPU, 16 on CUDA")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=256, help="band width and stride k")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-dense-above", type=int, default=None, metavar="T", help="time dense only up to T")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats} must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    cpu = args.device == "cpu"
    batch = args.batch or (1 if cpu else 4)
    heads = args.heads or (2 if cpu else 16)
    dtype = DTYPES[args.dtype or ("fp32" if cpu else "bf16")]

    device = torch.cuda.get_device_name() if not cpu else f"cpu, {torch.get_num_threads()} threads"
    print(f"forward+backward ms (median of {args.repeats}), batch {batch}, {heads} heads, head dim {args.head_dim}, "
          f"window/stride {args.window}, {str(dtype).removeprefix('torch.')}, {device}")
    print(f"{'T':>6}{'dense ms':>11}{'local ms':>11}{'speed-up':>10}{'strided ms':>12}{'speed-up':>10}")
    for t in args.seq:
        q, k, v = (torch.randn(batch, heads, t, args.head_dim, device=args.device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        ms = {name: fwd_bwd_ms(fn, q, k, v, args.warmup, args.repeats) for name, fn in kernels(args.window).items()
              if name != "dense" or args.skip_dense_above is None or t <= args.skip_dense_above}
        dense = ms.get("dense")
        cells = [f"{dense:>11.1f}" if dense else f"{'skipped':>11}"]
        for name, width in (("local", 11), ("strided", 12)):
            cells.append(f"{ms[name]:>{width}.1f}{(f'{dense / ms[name]:.2f}x' if dense else '-'):>10}")
        print(f"{t:>6}" + "".join(cells))


if __name__ == "__main__":
    main()
