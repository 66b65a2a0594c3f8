"""Pretraining throughput: tokens/s and MFU, megagpt against a plain PyTorch loop.

    python benchmarks/pretrain_throughput.py [--config PATH] [--repeats 2] [key=value ...]

On CPU both run at (1,1,1) on the demo corpus with the same model math, optimizer,
clipping and data; runs alternate (megagpt, plain, megagpt, ...) and the median step
time after the first steps is compared. MFU uses megagpt.planner.training_flops_per_token
(6 FLOPs per matmul weight per token, output head included, plus 12*h*span per layer for
attention) over the peak: on GPU the card's dense bf16 figure, on CPU the best fp32 matmul
rate measured here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megagpt.config import load_config  # noqa: E402
from megagpt.data.datasets import build_datasets, micro_batches  # noqa: E402
from megagpt.data.demo_corpus import build_demo_shard  # noqa: E402
from megagpt.planner import parameter_count, training_flops_per_token  # noqa: E402
from megagpt.train.schedules import batch_sizes, lr_schedule  # noqa: E402

GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16


class PlainBlock(nn.Module):
    def __init__(self, h: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(h, eps=eps), nn.LayerNorm(h, eps=eps)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def forward(self, x):
        b, t, h = x.shape
        q, k, v = self.attn.qkv(self.ln1(x)).view(b, t, self.heads, 3, h // self.heads).permute(3, 0, 2, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, h)
        x = x + self.attn.proj(a)
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.ln2(x)), approximate="tanh"))


class PlainGPT(nn.Module):
    """nanoGPT-style: the same math as megagpt's pre-LN GPT at tp=1, with plain nn layers."""

    def __init__(self, m):
        super().__init__()
        self.embedding = nn.Module()
        self.embedding.word_embeddings = nn.Embedding(m.padded_vocab_size, m.hidden_size)
        self.embedding.position_embeddings = nn.Embedding(m.seq_length, m.hidden_size)
        self.blocks = nn.ModuleList(PlainBlock(m.hidden_size, m.num_heads, m.layernorm_epsilon)
                                    for _ in range(m.num_layers))
        self.final_norm = nn.Module()
        self.final_norm.norm = nn.LayerNorm(m.hidden_size, eps=m.layernorm_epsilon)

    def forward(self, tokens):
        wte = self.embedding.word_embeddings.weight
        x = F.embedding(tokens, wte) + self.embedding.position_embeddings.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return F.linear(self.final_norm.norm(x), wte)


def megagpt_step_times(config: str, overrides: list[str], run_dir: str, threads: int) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "launchers.cli", "pretrain", "--config", config, *overrides,
                    f"run.dir={run_dir}", "train.progress=false"], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    os.remove(os.path.join(run_dir, "metrics.jsonl"))
    return [r["step_time_s"] for r in records], records[0]["loss"]


def plain_step_times(cfg, dataset) -> tuple[list[float], float]:
    from megagpt.model.gpt import GPT
    from megagpt.model.layers import LayerContext
    from megagpt.train.engine import adamw

    m, t, o = cfg.model, cfg.train, cfg.optim
    model = PlainGPT(m)
    reference = GPT(LayerContext(model=m, seed=t.seed, tp_group=None))  # same initial weights as megagpt
    model.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.endswith("_extra_state")})
    opt = adamw(model, o)
    sizes = batch_sizes(cfg)
    lr_at = lr_schedule(cfg, sum(sizes) * m.seq_length)
    times, first_loss, consumed = [], None, 0
    for gbs in sizes:
        for g in opt.param_groups:
            g["lr"] = lr_at((consumed + gbs) * m.seq_length)
        start = time.perf_counter()
        batches = list(micro_batches(dataset, consumed, gbs, t.micro_batch_size, 0, 1))
        losses = []
        for tokens, (labels, mask) in batches:
            logits = model(tokens)
            per_token = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1), reduction="none")
            loss = (per_token * mask.view(-1)).sum() / mask.sum()
            (loss / len(batches)).backward()
            losses.append(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        first_loss = first_loss if first_loss is not None else torch.stack(losses).mean().item()
        consumed += gbs
    return times, first_loss


def cpu_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "bench", "cpu-small.yaml"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-steps", type=int, default=2, help="first steps left out of the median")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = tempfile.mkdtemp(prefix="megagpt-bench-")
    cfg0 = load_config(args.config, args.overrides)
    prefix = build_demo_shard(os.path.join(REPO, "runs", "bench-data"), cfg0.model.vocab_size)
    overrides = [*args.overrides, f"data.prefixes=[{prefix}]", f"data.cache_dir={work}/cache"]
    cfg = load_config(args.config, overrides)

    import torch.distributed as dist

    if not dist.is_initialized():  # megatron-core's dataset builder wants a process group
        from megagpt.parallel.distributed import free_port

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    dataset, _ = build_datasets(cfg, sum(batch_sizes(cfg)), 1)

    ours, plain = [], []
    for _ in range(args.repeats):
        times, ours_loss = megagpt_step_times(args.config, overrides, os.path.join(work, "run"), args.threads)
        ours += times[args.skip_steps:]
        times, plain_loss = plain_step_times(cfg, dataset)
        plain += times[args.skip_steps:]

    tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_length
    flops = training_flops_per_token(cfg.model)
    device = "cpu"
    peak = cpu_peak_flops()
    rows = []
    for name, times in (("megagpt (1,1,1)", ours), ("plain PyTorch", plain)):
        tps = tokens_per_step / statistics.median(times)
        rows.append((name, statistics.median(times), tps, tps * flops / peak))
    print(f"\nconfig {os.path.relpath(args.config, REPO)}: {parameter_count(cfg.model) / 1e6:.1f}M parameters, "
          f"{flops / 1e6:.1f} MFLOP/token, {tokens_per_step} tokens/step, {args.threads} threads, device {device}, "
          f"peak {peak / 1e9:.1f} GFLOP/s (measured fp32 matmul)")
    print(f"first-step loss: megagpt {ours_loss:.6f}, plain {plain_loss:.6f} (same model math: equal within 1e-4: "
          f"{math.isclose(ours_loss, plain_loss, abs_tol=1e-4)})")
    print(f"{'system':<18}{'step s (median)':>17}{'tokens/s':>12}{'MFU':>8}")
    for name, step, tps, mfu in rows:
        print(f"{name:<18}{step:>17.4f}{tps:>12.0f}{mfu:>8.1%}")
    print(f"ratio megagpt / plain tokens/s: {rows[0][2] / rows[1][2]:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
