"""Checkpoint I/O: save and load seconds and GB/s, and what saving every N steps costs.

    python benchmarks/checkpoint_io.py [--config PATH] [--layout TP PP DP] [--every N]
                                       [--reshape-to TP PP DP] [key=value ...]

Trains `2 * every` steps saving every `every` (so two saves), then resumes the run at
the same layout (DeepSpeed's per-rank load) and, with --reshape-to, at another one
(the layout-free load). Seconds come from <run.dir>/checkpoint_io.jsonl, which the
trainer writes around each save and load, checksums included (a save computes them, a
resume checks every file against them, so each moves the whole checkpoint: its size);
step time is the median of metrics.jsonl's step_time_s. Overhead = save seconds /
(every * step time). On CPU the default is configs/bench/cpu-small.yaml on the demo corpus.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megagpt.config import shipped_config  # noqa: E402
from megagpt.data.demo_corpus import build_demo_shard  # noqa: E402
from megagpt.train.metrics import read_jsonl  # noqa: E402


def pretrain(config: str, layout, run_dir: str, overrides: list[str]) -> None:
    tp, pp, dp = layout
    cmd = [sys.executable, "-m", "launchers.cli", "pretrain", "--config", config, "--nproc", str(tp * pp * dp),
           f"parallel.tp={tp}", f"parallel.pp={pp}", f"run.dir={run_dir}", "train.progress=false",
           "run.tensorboard=false", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if proc.returncode != 0:
        sys.exit(f"benchmark run failed:\n{proc.stderr[-3000:]}")


def io_records(run_dir: str) -> list[dict]:
    return read_jsonl(os.path.join(run_dir, "checkpoint_io.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "bench", "cpu-small.yaml"))
    parser.add_argument("--layout", type=int, nargs=3, default=[1, 1, 1], metavar=("TP", "PP", "DP"))
    parser.add_argument("--every", type=int, default=5, help="save interval in steps")
    parser.add_argument("--reshape-to", type=int, nargs=3, metavar=("TP", "PP", "DP"))
    parser.add_argument("--work", help="where to put the runs (default: a temporary dir)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.every < 1:
        parser.error(f"--every {args.every} must be at least 1")
    # the runs start in the repository: relative paths must name there what they name here
    args.config = os.path.abspath(shipped_config(args.config))
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="megagpt-ckpt-bench-")
    if not args.work:
        atexit.register(shutil.rmtree, work, True)  # a run that fails leaves nothing behind either
    prefix = build_demo_shard(os.path.join(work, "data"), vocab_size=4096)
    steps = 2 * args.every
    base = [f"data.prefixes=[{prefix}]", f"train.steps={steps}", *args.overrides]
    run = os.path.join(work, "run")
    shutil.rmtree(run, ignore_errors=True)
    pretrain(args.config, args.layout, run, [*base, f"train.save_interval={args.every}", "train.keep_last=0"])
    pretrain(args.config, args.layout, run, base)  # resumes at step `steps`: a load, no training
    rows = [r for r in io_records(run)]
    step_s = statistics.median(m["step_time_s"] for m in read_jsonl(os.path.join(run, "metrics.jsonl"))[1:])
    if args.reshape_to:
        reshaped = os.path.join(work, "reshaped")
        shutil.rmtree(reshaped, ignore_errors=True)
        shutil.copytree(os.path.join(run, "checkpoints"), os.path.join(reshaped, "checkpoints"), symlinks=True)
        pretrain(args.config, args.reshape_to, reshaped, base)
        rows += io_records(reshaped)

    print(f"config {os.path.relpath(args.config, REPO)}, layout (tp,pp,dp)={tuple(args.layout)}, "
          f"save every {args.every} steps, median step {step_s:.3f} s")
    print(f"{'event':<14}{'layout':>10}{'step':>6}{'size MB':>10}{'seconds':>10}{'GB/s':>8}{'overhead':>10}")
    for r in rows:
        lay = r["layout"]
        overhead = f"{r['seconds'] / (args.every * step_s):.1%}" if r["event"] == "save" else ""
        print(f"{r['event']:<14}{'(%d,%d,%d)' % (lay['tp'], lay['pp'], lay['dp']):>10}{r['step']:>6}"
              f"{r['bytes'] / 1e6:>10.1f}{r['seconds']:>10.3f}{r['bytes'] / 1e9 / r['seconds']:>8.3f}{overhead:>10}")


if __name__ == "__main__":
    main()
