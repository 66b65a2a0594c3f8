"""Pretraining throughput: tokens/s, MFU and peak GPU memory, megagpt against a plain PyTorch loop.

    python benchmarks/pretrain_throughput.py [--device cpu|cuda] [--config PATH] [--compile] [key=value ...]
    python benchmarks/pretrain_throughput.py --device cuda --config configs/model/gpt3-xl.yaml

Both train the same model math at (1,1,1) on the demo corpus with the same optimizer,
clipping, precision and data. The systems, in one run on the same shapes:
megagpt eager and megagpt with train.compile (per-block torch.compile), and the plain
loop (nanoGPT style: fused AdamW, SDPA, tied head, bf16 autocast when the config says
bf16) eager and under torch.compile; on GPU also megagpt with GPT-3's alternating sparse
attention. On CPU compiling is off unless --compile (inductor's C++ build takes minutes
on 2 cores). Runs alternate per repeat and the median step time after the first steps is
compared. --profile adds one step at the end, profiled (torch.profiler, left out of the
timings), and lists the ops and kernels whose time per step differs most between megagpt and
the plain loop (eager against eager, compiled against compiled). MFU uses
megagpt.planner.training_flops_per_token of the dense model in every row (6 FLOPs per matmul
weight per token, output head included, plus 12*h*T per layer for attention) over the peak:
on GPU the card's dense bf16 figure, on CPU the best fp32 matmul rate measured here.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import glob
import json
import os
import shutil
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

from megagpt import usable_cpus  # noqa: E402
from megagpt.config import load_config, shipped_config  # noqa: E402
from megagpt.data.datasets import build_datasets, micro_batches  # noqa: E402
from megagpt.data.demo_corpus import build_demo_shard  # noqa: E402
from megagpt.planner import parameter_count, training_flops_per_token  # noqa: E402
from megagpt.train.profiling import op_times, step_profile  # noqa: E402
from megagpt.train.schedules import batch_sizes, lr_schedule  # noqa: E402

# Dense bf16 TFLOP/s (NVIDIA's datasheets halve their with-sparsity figures), the first name found in the
# device's name wins: the PCIe and NVL cards run at lower clocks than the SXM parts ("NVIDIA H100 80GB HBM3").
GPU_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H800 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0),
                   ("H100", 989.0), ("H800", 989.0), ("H200", 989.0), ("A100", 312.0))


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


def megagpt_run(config: str, overrides: list[str], run_dir: str, threads: int):
    """(step times, first loss, peak GPU GiB, profiled ops by name or None) of `megagpt pretrain` in its own
    process; the steps under train.profile_steps are left out of the times."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "launchers.cli", "pretrain", "--config", config, *overrides,
                    f"run.dir={run_dir}", "train.progress=false", "train.resume=false"], cwd=REPO, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    os.remove(os.path.join(run_dir, "metrics.jsonl"))
    ops = None
    for path in glob.glob(os.path.join(run_dir, "profile", "rank0-*.ops.json")):
        with open(path) as f:
            ops = {o["name"]: o for o in json.load(f)["per_step"]}
        os.remove(path)
    timed = [r for r in records if not r.get("profiled")]
    return [r["step_time_s"] for r in timed], records[0]["loss"], records[-1].get("peak_gpu_memory_gb", 0.0), ops


def plain_run(cfg, dataset, device: torch.device, compiled: bool, profile: bool = False):
    """The plain loop: same weights, data, optimizer, clipping; bf16 autocast when train.precision is bf16.
    Returns what megagpt_run does; with `profile` its last step runs under torch.profiler, untimed."""
    from megagpt.model.gpt import GPT
    from megagpt.model.layers import LayerContext
    from megagpt.train.optimizer import adamw

    m, t, o = cfg.model, cfg.train, cfg.optim
    with torch.device("meta"):  # its own initialisation would be overwritten (tens of seconds at gpt3-xl)
        model = PlainGPT(m)
    reference = GPT(LayerContext(model=m, seed=t.seed, tp_group=None))  # same initial weights as megagpt
    model.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.endswith("_extra_state")},
                          assign=True)
    del reference
    model.to(device)
    opt = adamw(model, o)
    forward = torch.compile(model) if compiled else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")
    sizes = batch_sizes(cfg)
    lr_at = lr_schedule(cfg, sum(sizes) * m.seq_length)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, first_loss, consumed, ops = [], None, 0, None
    for i, gbs in enumerate(sizes):
        profiler = step_profile(device) if profile and i == len(sizes) - 1 else None
        if profiler:
            profiler.__enter__()
        for g in opt.param_groups:
            g["lr"] = lr_at((consumed + gbs) * m.seq_length)
        start = time.perf_counter()
        batches = list(micro_batches(dataset, consumed, gbs, t.micro_batch_size, 0, 1))
        losses = []
        for tokens, (labels, mask) in batches:
            tokens, labels, mask = tokens.to(device), labels.to(device), mask.to(device)
            with autocast:
                logits = forward(tokens)
            per_token = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1), reduction="none")
            loss = (per_token * mask.view(-1)).sum() / mask.sum()
            (loss / len(batches)).backward()
            losses.append(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_loss = torch.stack(losses).mean().item()  # also waits for the GPU
        if profiler:
            profiler.__exit__(None, None, None)
            ops = {o["name"]: o for o in op_times(profiler.key_averages(), device, 1)}
        else:
            times.append(time.perf_counter() - start)
        first_loss = first_loss if first_loss is not None else step_loss
        consumed += gbs
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    del model, opt, forward
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return times, first_loss, peak, ops


def print_profile_differences(ops: dict, device: str, top: int) -> None:
    """megagpt against the plain loop, eager with eager and compiled with compiled: the ops and kernels
    whose self time per step differs most: GPU kernels on a GPU (the ops that launch them would count
    their time twice), ops on the CPU."""
    key = "self_device_ms" if device == "cuda" else "self_cpu_ms"
    for ours, theirs in (("megagpt", "plain eager"), ("megagpt compiled", "plain compiled")):
        if ours not in ops or theirs not in ops:
            continue
        a, b = ({n: o for n, o in ops[s].items() if o["kernel"] == (device == "cuda")} for s in (ours, theirs))
        total_a, total_b = (sum(o[key] for o in x.values()) for x in (a, b))
        print(f"\nprofiled step, {ours} against {theirs}: self {'GPU' if device == 'cuda' else 'CPU'} time "
              f"{total_a:.1f} ms against {total_b:.1f} ms; the {top} largest differences")
        print(f"{'op or kernel':<72}{'calls':>7}{'ms':>9}{'calls':>7}{'ms':>9}{'diff ms':>9}")
        names = sorted(set(a) | set(b), key=lambda n: -abs(a.get(n, {}).get(key, 0) - b.get(n, {}).get(key, 0)))
        for name in names[:top]:
            x, y = a.get(name, {key: 0.0, "calls": 0}), b.get(name, {key: 0.0, "calls": 0})
            short = name if len(name) <= 70 else name[:67] + "..."
            print(f"{short:<72}{x['calls']:>7.0f}{x[key]:>9.2f}{y['calls']:>7.0f}{y[key]:>9.2f}{x[key] - y[key]:>9.2f}")


def dense_flops_per_token(m) -> float:
    """Every row's MFU numerator: the dense model's FLOPs. A GPT-3 preset says model.attention=alternating,
    which only the alternating row runs; counted as it, the dense rows' MFU came out 6% low at gpt3-xl."""
    return training_flops_per_token(dataclasses.replace(m, attention="dense"))


def cpu_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def gpu_peak_flops(name: str) -> tuple[float, str]:
    """(dense bf16 FLOP/s, a line for the table) for a CUDA device's name."""
    for key, tflops in GPU_PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{name}, dense bf16 peak {tflops:.0f} TFLOP/s"
    raise SystemExit(f"no peak FLOP/s known for {name!r}: add it to GPU_PEAK_TFLOPS")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def systems(device: str, compile_on_cpu: bool) -> list[tuple[str, str, list[str]]]:
    """(name, kind, extra overrides) for each system the run compares. The compiled pair first: where a time
    limit stops the run (make gpu-check), it has the head-to-head the eager rows have been measured without."""
    rows = []
    if device == "cuda" or compile_on_cpu:
        rows += [("megagpt compiled", "megagpt", ["train.compile=true", "model.attention=dense"]),
                 ("plain compiled", "plain", [])]
    if device == "cuda":
        rows.append(("megagpt compiled, alternating", "megagpt", ["train.compile=true", "model.attention=alternating"]))
    rows += [("megagpt", "megagpt", ["train.compile=false", "model.attention=dense"]), ("plain eager", "plain", [])]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "bench", "cpu-small.yaml"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--compile", action="store_true", help="on CPU too, compare compiled systems")
    parser.add_argument("--systems", nargs="+", metavar="NAME",
                        help="only these rows, by name (e.g. 'megagpt compiled' 'plain compiled'): a short profiled "
                             "head-to-head")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, help="train.steps (default: the config's; gpt3 presets: 10)")
    parser.add_argument("--skip-steps", type=int, default=2, help="first steps left out of the median")
    parser.add_argument("--threads", type=int, default=usable_cpus(),
                        help="torch threads (default: the CPUs this process may run on)")
    parser.add_argument("--profile", action="store_true", help="profile one more step and list where megagpt's "
                        "time differs from the plain loop's")
    parser.add_argument("--profile-top", type=int, default=20, help="differences listed per pair of systems")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    for flag, value in (("--repeats", args.repeats), ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{flag} {value} must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    # the megagpt runs start in the repository: a relative path must name there what it names here
    args.config = os.path.abspath(shipped_config(args.config))
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # known before any system runs: an unlisted GPU ended the run with no table after every system had run
    peak_flops, peak_text = gpu_peak_flops(torch.cuda.get_device_name(device)) if args.device == "cuda" else (0, "")

    work = tempfile.mkdtemp(prefix="megagpt-bench-")
    atexit.register(shutil.rmtree, work, True)  # each run's data cache and run dirs, whatever way the script ends
    cfg0 = load_config(args.config, args.overrides)
    prefix = build_demo_shard(os.path.join(REPO, "runs", "bench-data"), cfg0.model.vocab_size)
    overrides = [*bench_shape(cfg0, args.device, args.steps), *args.overrides, f"data.prefixes=[{prefix}]",
                 f"data.cache_dir={work}/cache", f"run.device={args.device}", "run.tensorboard=false"]
    cfg = load_config(args.config, overrides)
    if cfg.train.steps <= args.skip_steps:  # else the median has no steps, found after every run
        parser.error(f"train.steps={cfg.train.steps} leaves no step after --skip-steps {args.skip_steps}")
    if args.profile:  # one step more, profiled: the runs time the same steps as without --profile
        last = cfg.train.steps + 1
        overrides += [f"train.steps={last}", f"train.profile_steps=[{last},{last}]"]
        cfg = load_config(args.config, overrides)

    import torch.distributed as dist

    if not dist.is_initialized():  # megatron-core's dataset builder wants a process group
        from megagpt.parallel.distributed import free_port

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    dataset, _ = build_datasets(cfg, sum(batch_sizes(cfg)), 1)

    rows = systems(args.device, args.compile)
    if args.systems:
        unknown = sorted(set(args.systems) - {name for name, _, _ in rows})
        if unknown:
            parser.error(f"--systems: no system {', '.join(map(repr, unknown))} on {args.device} "
                         f"(these run: {', '.join(name for name, _, _ in rows)})")
        rows = [row for row in rows if row[0] in args.systems]
    times = {name: [] for name, _, _ in rows}
    first_loss, peak, ops = {}, {}, {}
    failed = {}
    for _ in range(args.repeats):
        for name, kind, extra in rows:
            if name in failed:
                continue
            begin = time.perf_counter()
            try:
                if kind == "megagpt":
                    run = megagpt_run(args.config, overrides + extra, os.path.join(work, "run"), args.threads)
                else:
                    run = plain_run(cfg, dataset, device, compiled=name.endswith("compiled"), profile=args.profile)
            except (subprocess.CalledProcessError, RuntimeError) as exc:  # one system failing leaves the others' rows
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                print(f"{name}: FAILED {failed[name]}", file=sys.stderr, flush=True)
                continue
            times[name] += run[0][args.skip_steps:]
            first_loss[name], peak[name] = run[1], max(peak.get(name, 0.0), run[2])
            if run[3]:
                ops[name] = run[3]
            memory = f", peak {run[2]:.1f} GiB" if args.device == "cuda" else ""
            print(f"{name}: step times {' '.join(f'{t:.3f}' for t in run[0])} s{memory} "
                  f"({time.perf_counter() - begin:.0f} s with start-up)", file=sys.stderr, flush=True)
    rows = [row for row in rows if row[0] not in failed]

    tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_length
    flops = dense_flops_per_token(cfg.model)
    if args.device == "cpu":
        peak_flops = cpu_peak_flops()
        peak_text = f"peak {peak_flops / 1e9:.1f} GFLOP/s (measured fp32 matmul)"
    print(f"\nconfig {os.path.relpath(args.config, REPO)}: {parameter_count(cfg.model) / 1e6:.1f}M parameters, "
          f"{flops / 1e9:.3f} GFLOP/token (dense), {tokens_per_step} tokens/step, precision {cfg.train.precision}, "
          f"{args.threads} threads, device {args.device}, {peak_text}")
    print("first-step loss: " + ", ".join(f"{n} {first_loss[n]:.5f}" for n, _, _ in rows))
    print(f"{'system':<32}{'step s (median)':>17}{'tokens/s':>12}{'MFU':>8}{'peak GiB':>10}{'vs plain':>10}")
    results = {}
    for name, _, _ in rows:
        step = statistics.median(times[name])
        results[name] = tokens_per_step / step
    for name, _, extra in rows:
        tps = results[name]
        mfu = tps * flops / peak_flops  # dense FLOPs: the alternating row's MFU is on the same count
        baseline = "plain compiled" if "compiled" in name and "plain compiled" in results else "plain eager"
        memory = f"{peak[name]:>10.1f}" if args.device == "cuda" else f"{'-':>10}"  # CPU memory is not measured
        print(f"{name:<32}{tokens_per_step / tps:>17.4f}{tps:>12.0f}{mfu:>8.1%}{memory}"
              f"{tps / results.get(baseline, float('nan')):>10.3f}")
    for name, reason in failed.items():
        print(f"{name:<32}FAILED {reason}")
    print("targets: megagpt / plain eager >= 0.98 (CPU: >= 0.95); megagpt compiled / plain compiled >= 1.0; "
          "alternating >= dense (GPU)")
    if args.profile:
        print_profile_differences(ops, args.device, args.profile_top)


def bench_shape(cfg, device: str, steps: int | None) -> list[str]:
    """A GPT-3 preset's recipe (batch ramp, 300B tokens) cut to a short run of one shape: micro-batch 4,
    global batch 16, no ramp, as the issue's H100 table used."""
    shape = [f"train.steps={steps}"] if steps else []
    if cfg.train.batch_ramp_start is not None:
        shape += ["train.batch_ramp_start=null", "train.global_batch_size=16", "train.micro_batch_size=4",
                  "train.eval_interval=0", f"train.steps={steps or 10}"]
        if device == "cuda":
            shape.append("train.precision=bf16")
    return shape


if __name__ == "__main__":
    main()
