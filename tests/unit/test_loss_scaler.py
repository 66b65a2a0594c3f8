"""fp16's dynamic loss scale survives a reshaping load: it travels in universal/ (CPU has no fp16 training, so the
state's round trip is checked here on DeepSpeed's own scaler, and the GPU run in tests/gpu/test_gpu_paths.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from megagpt.train.universal import UniversalShards, loss_scaler_state, restore_loss_scaler


def fp16_engine():
    """An engine as the trainer's fp16 runs have it: ZeRO's optimizer with DeepSpeed's dynamic scaler, made with
    megagpt's fp16 settings (train/optimizer.py: 2^16 to start, hysteresis 2, min scale 1)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    scaler = DynamicLossScaler(init_scale=2.0**16, scale_window=1000, min_scale=1, delayed_shift=2,
                               consecutive_hysteresis=False)
    return SimpleNamespace(optimizer=SimpleNamespace(loss_scaler=scaler))


@pytest.fixture(autouse=True)
def rank_zero(monkeypatch):
    """The scaler logs its scale changes on rank 0, asking DeepSpeed's communicator, which has no world here."""
    from deepspeed import comm

    monkeypatch.setattr(comm, "get_rank", lambda *args, **kwargs: 0)


def scales(engine, overflows: list[bool]) -> list[float]:
    out = []
    for overflow in overflows:
        engine.optimizer.loss_scaler.update_scale(overflow)
        out.append(engine.optimizer.loss_scaler.cur_scale)
    return out


def test_a_restored_scale_continues_as_the_saved_one_would(tmp_path):
    saved = fp16_engine()
    scales(saved, [True, True, True, False, False])  # hysteresis spent, the scale lowered twice
    state = loss_scaler_state(saved)
    assert state["cur_scale"] == 2.0**14 and state["cur_iter"] == 5
    # through a universal/ shard file, read back as a reshaping load reads it (torch.load, weights_only)
    (tmp_path / "universal").mkdir()
    torch.save({"params": {}, "partition_dims": {}, "tp": 1, "tp_rank": 0, "optimizer_step": 5,
                "loss_scaler": state}, tmp_path / "universal" / "pp0_tp0.pt")
    resumed = fp16_engine()
    restore_loss_scaler(resumed, UniversalShards(str(tmp_path)).loss_scaler)
    assert loss_scaler_state(resumed) == state
    later = [True, False, True, True, False, False]
    assert scales(resumed, later) == scales(saved, later)


def test_runs_without_a_dynamic_scale_save_none_and_keep_a_fresh_one():
    assert loss_scaler_state(SimpleNamespace(optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)]))) is None
    fresh = fp16_engine()
    restore_loss_scaler(fresh, None)  # an fp32 or bf16 checkpoint loaded into an fp16 run
    assert fresh.optimizer.loss_scaler.cur_scale == 2.0**16


def test_a_shard_written_before_the_scale_was_kept_loads_without_one(tmp_path):
    """Checkpoints saved by earlier versions have no "loss_scaler" entry: an fp16 run loading them starts afresh."""
    (tmp_path / "universal").mkdir()
    torch.save({"params": {}, "partition_dims": {}, "tp": 1, "tp_rank": 0, "optimizer_step": 5},
               tmp_path / "universal" / "pp0_tp0.pt")
    assert UniversalShards(str(tmp_path)).loss_scaler is None
