"""`make gpu-check`: every GPU path (tests/gpu) and the GPU benchmarks, ending in one table.

    python benchmarks/gpu_check.py [--budget-s 480]

Runs, each under its own time limit: pytest -m gpu tests/gpu (every trainer path on CUDA + NCCL
under the collective audit, FlexAttention and the strided kernel against dense attention), then
benchmarks/pretrain_throughput.py on the gpt3-xl preset (megagpt eager and compiled, GPT-3's
alternating attention, the plain loop eager and compiled) and benchmarks/attention.py at
T = 2k, 8k, 16k. Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checks(py: str) -> list[tuple[str, list[str], float]]:
    """(name, command, share of the budget)."""
    return [
        ("tests/gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/gpu"], 0.5),
        ("pretrain throughput, gpt3-xl bf16 (1,1,1)",
         [py, "benchmarks/pretrain_throughput.py", "--device", "cuda", "--config", "configs/model/gpt3-xl.yaml",
          "--repeats", "1", "--steps", "6"], 0.4),
        ("attention fwd+bwd, bf16", [py, "benchmarks/attention.py", "--device", "cuda", "--dtype", "bf16",
                                     "--seq", "2048", "8192", "16384"], 0.1),
    ]


def table_lines(name: str, output: str) -> list[str]:
    """What a check contributes to the final table: pytest's summary, or the benchmark's table."""
    lines = [line for line in output.splitlines() if line.strip()]
    if name == "tests/gpu":
        return [line for line in lines if " passed" in line or " failed" in line or " error" in line][-1:]
    start = next((i for i, line in enumerate(lines) if line.startswith(("config ", "forward+backward"))), None)
    return lines[start:] if start is not None else lines[-5:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=480.0, help="all checks together (issue target: 8 min)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; the GPU paths are unverified on this machine")
        return 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rows, failed, begin = [], False, time.perf_counter()
    for name, cmd, share in checks(sys.executable):
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.budget_s * share)
            output, status = proc.stdout + proc.stderr, "ok" if proc.returncode == 0 else f"FAILED (rc {proc.returncode})"
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            status = f"TIMED OUT after {args.budget_s * share:.0f} s"
        failed |= status != "ok"
        rows.append((name, status, time.perf_counter() - start, table_lines(name, output)))
        if status != "ok":
            sys.stderr.write(output[-6000:])
    print(f"\ngpu-check on {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} GPU), "
          f"{time.perf_counter() - begin:.0f} s in all")
    for name, status, seconds, lines in rows:
        print(f"\n== {name}: {status}, {seconds:.0f} s")
        for line in lines:
            print(f"   {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
