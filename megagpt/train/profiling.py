"""torch.profiler over chosen training steps (train.profile_steps, train.profile_ranks), as Megatron-LM's --profile.

Each profiled rank writes to <run.dir>/profile/:
  rank{R}-steps{A}-{B}.json.gz   a Chrome / Perfetto trace of steps A..B
  rank{R}-steps{A}-{B}.txt       torch's table of ops and kernels, by self time on the device
  rank{R}-steps{A}-{B}.ops.json  the same per name as data: calls, self device ms and self CPU ms per step, and
                                 whether it is a device kernel (on a GPU the op that launched a kernel shows the
                                 kernel's time too: sum the kernels alone for the step's GPU time)
Those steps' records in metrics.jsonl carry "profiled": true (the profiler slows them down). A resumed run starts
at its first step inside the range, and a loop that stops inside it writes the steps it finished (A..B say which).
"""

from __future__ import annotations

import json
import os

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


def step_profile(device: torch.device) -> profile:
    """A torch.profiler for training steps on `device`: CPU ops, and CUDA kernels on a GPU."""
    return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else []))


def op_times(averages, device: torch.device, steps: int) -> list[dict]:
    """Per op or kernel name in a profile's key_averages(), per step: calls, self device ms, self CPU ms, and
    whether it is a device kernel; slowest first (by device time on a GPU)."""
    on_device = device.type == "cuda"
    ops = [{"name": e.key, "calls": e.count / steps, "kernel": e.device_type != DeviceType.CPU,
            "self_device_ms": e.self_device_time_total / 1e3 / steps if on_device else 0.0,
            "self_cpu_ms": e.self_cpu_time_total / 1e3 / steps} for e in averages]
    return sorted(ops, key=lambda o: -(o["self_device_ms"] if on_device else o["self_cpu_ms"]))


class StepProfiler:
    """Profiles train.profile_steps on train.profile_ranks: before(step) and after(step) around each step, and
    close() once the loop ends, however it ends."""

    def __init__(self, steps, ranks, rank: int, device: torch.device, run_dir: str):
        self.first, self.last = steps if steps else (0, -1)
        self.enabled = bool(steps) and rank in ranks
        self.rank, self.device, self.dir = rank, device, os.path.join(run_dir, "profile")
        self._prof, self._start, self._done, self._in_step = None, 0, None, False

    def marks(self, step: int) -> bool:
        """Whether `step` is in train.profile_steps: every rank's record says so, since the profiled ranks slow
        the whole step down."""
        return self.first <= step <= self.last

    def before(self, step: int) -> None:
        """Start at the first step, or at the first one a resumed run reaches inside the range."""
        if self.enabled and self.marks(step) and self._prof is None:
            self._start, self._done = step, None
            self._prof = step_profile(self.device)
            self._prof.__enter__()
        self._in_step = True

    def after(self, step: int) -> None:
        self._in_step = False
        if self._prof is None:
            return
        self._done = step
        if step == self.last:
            self._write()

    def close(self) -> None:
        """A loop that stopped inside the range (a signal, a diverged step) writes the steps it finished; a
        step cut short by an exception is not one of them, so then nothing is written."""
        if self._prof is None:
            return
        if self._done is not None and not self._in_step:
            self._write()
        else:
            self._prof.__exit__(None, None, None)
            self._prof = None

    def _write(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._prof.__exit__(None, None, None)
        prof, self._prof = self._prof, None
        os.makedirs(self.dir, exist_ok=True)
        stem = os.path.join(self.dir, f"rank{self.rank}-steps{self._start}-{self._done}")
        prof.export_chrome_trace(stem + ".json.gz")
        averages = prof.key_averages()  # one pass over the trace's events serves the table and the data
        with open(stem + ".txt", "w") as f:
            f.write(averages.table(sort_by="self_device_time_total" if self.device.type == "cuda" else
                                   "self_cpu_time_total", row_limit=60, max_name_column_width=90))
        ops = op_times(averages, self.device, self._done - self._start + 1)
        with open(stem + ".ops.json", "w") as f:
            json.dump({"steps": [self._start, self._done], "device": self.device.type, "per_step": ops}, f,
                      indent=0)
        print(f"megagpt: rank {self.rank} profiled steps {self._start}-{self._done}: {stem}.txt (ops and kernels "
              f"by time), .json.gz (trace for Perfetto or chrome://tracing)", flush=True)
