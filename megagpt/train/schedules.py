"""GPT-3's learning-rate and batch-size schedules, both as functions of consumed tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from megagpt.config import Config


@dataclass(frozen=True)
class BatchRamp:
    """Start at `start` sequences, add `increment` each time another share of `ramp_tokens` is consumed."""

    full: int
    start: Optional[int] = None
    increment: Optional[int] = None
    ramp_tokens: int = 0

    def batch_size(self, consumed_tokens: int) -> int:
        if self.start is None or self.start >= self.full or self.ramp_tokens <= 0:
            return self.full
        increments = (self.full - self.start) // self.increment
        # whole numbers: consumed // (ramp / increments) in floats gave 46 for 47 at the ramp's end (12e9 of 12e9)
        done = consumed_tokens * increments // self.ramp_tokens
        return min(self.full, self.start + done * self.increment)


@dataclass(frozen=True)
class CosineLR:
    """Linear warm-up to `peak`, then cosine decay to `peak * min_ratio` at `decay_tokens`, then flat."""

    peak: float
    min_ratio: float
    warmup_tokens: int
    decay_tokens: int

    def __call__(self, tokens: int) -> float:
        if tokens < self.warmup_tokens:
            return self.peak * tokens / self.warmup_tokens
        span = max(self.decay_tokens - self.warmup_tokens, 1)
        progress = min((tokens - self.warmup_tokens) / span, 1.0)
        floor = self.peak * self.min_ratio
        return floor + (self.peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_ramp(cfg: Config) -> BatchRamp:
    t = cfg.train
    return BatchRamp(t.global_batch_size, t.batch_ramp_start, t.batch_ramp_increment, t.batch_ramp_tokens)


def batch_sizes(cfg: Config) -> list[int]:
    """The global batch size of every step of the run."""
    ramp, seq = batch_ramp(cfg), cfg.model.seq_length
    sizes, tokens = [], 0
    while len(sizes) < cfg.train.steps and (not sizes or sizes[-1] < ramp.full):
        sizes.append(ramp.batch_size(tokens))
        tokens += sizes[-1] * seq
    return sizes + [ramp.full] * (cfg.train.steps - len(sizes))  # the ramp's end on: the full batch


def lr_schedule(cfg: Config, run_tokens: int) -> CosineLR:
    o = cfg.optim
    return CosineLR(o.lr, o.min_lr_ratio, o.warmup_tokens, o.decay_tokens or run_tokens)


def note_schedule(run_dir: str, lr_at: CosineLR, resumed_at: int, next_tokens: int) -> None:
    """Record the cosine's end (run.dir/lr_schedule.json), and say so where a resume moves it: with
    optim.decay_tokens unset it is the whole run's tokens, so raising train.steps to go on stretches the decay,
    and the lr jumps at the resume (Megatron-LM refuses a changed decay; megagpt lets a run go longer).
    next_tokens: the tokens consumed once step resumed_at + 1's batch is, where that step takes its lr."""
    import json
    import os
    import sys

    from megagpt.files import writing

    path = os.path.join(run_dir, "lr_schedule.json")
    try:
        with open(path) as f:
            before = json.load(f)["decay_tokens"]
    except (OSError, ValueError, KeyError, TypeError):
        before = None
    if resumed_at and before is not None and before != lr_at.decay_tokens:
        then = CosineLR(lr_at.peak, lr_at.min_ratio, lr_at.warmup_tokens, before)
        print(f"megagpt: warning: the cosine now ends at {lr_at.decay_tokens:,} tokens, not {before:,} (optim.decay_tokens "
              f"is unset, so train.steps sets it): the lr at step {resumed_at + 1} is {lr_at(next_tokens):.3g} "
              f"where the run was heading for {then(next_tokens):.3g}; a run meant to be extended sets "
              f"optim.decay_tokens from its start", file=sys.stderr, flush=True)
    with writing(path, path + ".tmp"):
        with open(path + ".tmp", "w") as f:
            json.dump({"decay_tokens": lr_at.decay_tokens, "warmup_tokens": lr_at.warmup_tokens}, f)
        os.replace(path + ".tmp", path)
