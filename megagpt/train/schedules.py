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
    for _ in range(cfg.train.steps):
        sizes.append(ramp.batch_size(tokens))
        tokens += sizes[-1] * seq
    return sizes


def lr_schedule(cfg: Config, run_tokens: int) -> CosineLR:
    o = cfg.optim
    return CosineLR(o.lr, o.min_lr_ratio, o.warmup_tokens, o.decay_tokens or run_tokens)
