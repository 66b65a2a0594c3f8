"""Stop a run whose loss or gradient norm is no longer finite, naming the step (Megatron-LM's
--check-for-nan-in-loss-and-grad). Every rank sees the same values (the loss is averaged over DP,
the norm is global), so every rank stops after the same step, before anything is saved."""

from __future__ import annotations

import math
import os

from megagpt.errors import TrainingError


def check_finite(what: str, values: dict, checkpoint_root: str) -> None:
    """values: name -> float or None (not measured). fp16's skipped steps report an infinite gradient
    norm on purpose (the loss scale is lowered): its callers leave the norm out."""
    bad = {k: v for k, v in values.items() if v is not None and not math.isfinite(v)}
    if bad:
        from megagpt.train.checkpoint import read_latest

        told = ", ".join(f"{k} {v}" for k, v in bad.items())
        saved = read_latest(checkpoint_root)
        raise TrainingError(f"{what}: {told}: the run diverged (try a lower optim.lr or a longer warm-up, and "
                            f"check that step's data); the last checkpoint is "
                            f"{os.path.join(checkpoint_root, saved) if saved else 'none: nothing was saved'}")
