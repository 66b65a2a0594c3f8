"""`make gpu-check`: every GPU path (tests/gpu) and the GPU benchmarks, ending in one table.

    python benchmarks/gpu_check.py [--budget-s 480] [--log-dir DIR] [--only tests|bench]

Runs, each under its own time limit (its share of the budget left when it starts): pytest -m gpu
tests/gpu (every trainer path on CUDA + NCCL under the collective audit, FlexAttention and the
strided kernel against dense attention), then benchmarks/pretrain_throughput.py on the gpt3-xl
preset (megagpt eager and compiled, GPT-3's alternating attention, the plain loop eager and
compiled; run it alone with --profile for the GPU kernels whose time differs most between megagpt
and the plain loop) and benchmarks/attention.py at T = 2k, 8k, 16k. The tests run in parallel on the one GPU when pytest-xdist is installed (they are
tiny single-rank runs); the benchmarks run alone. Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERRUPT_GRACE_S = 15  # what a check at its limit has to print its failures before it is killed


def checks(py: str) -> list[tuple[str, list[str], float]]:
    """(name, command, share of the budget)."""
    # Each test is a few tiny single-GPU processes: run them side by side when xdist is there.
    # (an H100 host's 16 cores: 8 workers ran 32 of 33 tests in 218 s, 12 all of them in 175 s)
    workers = ["-n", str(min(12, os.cpu_count() or 1))] if importlib.util.find_spec("xdist") else []
    return [
        ("tests/gpu", [py, "-m", "pytest", "-q", "-rfE", "-m", "gpu", "-p", "no:cacheprovider", "--durations=15",
                       *workers, "tests/gpu"], 0.38),
        # five systems, each 30-60 s with its start-up and compile on an H100 (--profile adds a step to
        # each and did not fit: run the benchmark alone with it to see where time goes)
        ("pretrain throughput, gpt3-xl bf16 (1,1,1)",
         [py, "benchmarks/pretrain_throughput.py", "--device", "cuda", "--config", "configs/model/gpt3-xl.yaml",
          "--repeats", "1", "--steps", "6"], 0.52),
        ("attention fwd+bwd, bf16", [py, "benchmarks/attention.py", "--device", "cuda", "--dtype", "bf16",
                                     "--head-dim", "128", "--seq", "2048", "8192", "16384"], 0.10),
    ]


def table_lines(name: str, output: str) -> list[str]:
    """What a check contributes to the final table: pytest's summary, or the benchmark's table."""
    lines = [line for line in output.splitlines() if line.strip()]
    if name == "tests/gpu":
        failures = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
        return failures + [line for line in lines if " passed" in line or " failed" in line or " error" in line][-1:]
    start = next((i for i, line in enumerate(lines) if line.startswith(("config ", "forward+backward"))), None)
    if start is not None:
        return lines[start:]
    # no table (ended at its limit): each system's line as it finished
    return [line for line in lines if ": step times " in line or ": FAILED " in line] or lines[-5:]


def run_check(cmd: list[str], env: dict, limit_s: float) -> tuple[str, str]:
    """(output, status) of one check; at its limit the check is interrupted (15 s to report) and then its whole
    process group is ended, so no pretrain process it started keeps the GPU (or the output pipe) after it."""
    # A shell starts a background job (`make gpu-check &`, nohup) with SIGINT ignored, which a child inherits, and
    # the interrupt below would do nothing. A handled signal is reset to its default in the child at exec.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=limit_s)
        return output, "ok" if proc.returncode == 0 else f"FAILED (rc {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # pytest then prints what failed so far
        try:
            output, _ = proc.communicate(timeout=INTERRUPT_GRACE_S)
        except subprocess.TimeoutExpired:
            output = None
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group outlived the interrupt
        except ProcessLookupError:
            pass
        if output is None:
            output, _ = proc.communicate()
        return output, f"TIMED OUT after {limit_s:.0f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=480.0, help="all checks together (issue target: 8 min)")
    parser.add_argument("--log-dir", help="write each check's whole output here")
    parser.add_argument("--only", choices=("tests", "bench"), help="the tests alone, or the benchmarks alone")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; the GPU paths are unverified on this machine")
        return 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rows, failed, begin = [], False, time.perf_counter()
    chosen = [(i, check) for i, check in enumerate(checks(sys.executable))
              if not args.only or (args.only == "tests") == (i == 0)]
    for n, (i, (name, cmd, share)) in enumerate(chosen):
        start = time.perf_counter()
        # its share of what is left: time a check leaves unused goes to the ones after it
        left = args.budget_s - (start - begin)
        # less the grace an interrupted check has to report, so that the whole run keeps within --budget-s
        limit = left * share / sum(c[1][2] for c in chosen[n:]) - INTERRUPT_GRACE_S
        if limit < 1:
            output, status = "", "NOT RUN (no time left)"
        else:
            output, status = run_check(cmd, env, limit)
        failed |= status != "ok"
        if args.log_dir:
            os.makedirs(args.log_dir, exist_ok=True)
            with open(os.path.join(args.log_dir, f"check{i}.log"), "w") as f:
                f.write(f"$ {' '.join(cmd)}\n{status}\n{output}")
        print(f"gpu-check: {name}: {status} in {time.perf_counter() - start:.0f} s", flush=True)
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
