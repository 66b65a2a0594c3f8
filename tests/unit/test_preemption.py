"""Preemption's reason, in a world of one: the one the ranks agreed on, not one that came during the save."""

from __future__ import annotations

import signal
import time
from types import SimpleNamespace

import pytest
import torch

from megagpt.train.pretrain import PREEMPTED, Preemption


@pytest.fixture
def preemption(world_of_one, monkeypatch):
    """A Preemption on CPU; the signal handlers are pytest's again afterwards."""
    monkeypatch.setattr(Preemption, "in_process", None)
    saved = {sig: signal.getsignal(sig) for sig in Preemption.SIGNALS}
    yield Preemption(torch.device("cpu"), exit_duration_minutes=60)
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def stop_message(preemption, tmp_path, capsys) -> str:
    preemption.stop(SimpleNamespace(close=lambda: None, problem=None), str(tmp_path), is_logger=True,
                    saved="step 3 to ckpt")
    assert (tmp_path / PREEMPTED).exists()
    return capsys.readouterr().out


def test_nothing_to_stop_for(preemption):
    assert not preemption.agreed() and preemption.why is None


def test_the_deadline_that_stopped_the_run_is_named_though_a_signal_follows(preemption, tmp_path, capsys):
    preemption.deadline = time.time() - 1
    assert preemption.agreed()
    preemption._handle(signal.SIGTERM, None)  # Slurm's signal, during the save
    assert stop_message(preemption, tmp_path, capsys) == \
        "megagpt: train.exit_duration_minutes=60 reached; saved step 3 to ckpt and stopped\n"


def test_a_signal_is_named_and_a_deadline_passed_during_the_save_is_not(preemption, tmp_path, capsys):
    preemption._handle(signal.SIGUSR1, None)
    assert preemption.agreed()
    preemption.deadline = time.time() - 1
    assert stop_message(preemption, tmp_path, capsys) == \
        "megagpt: signal SIGUSR1 received; saved step 3 to ckpt and stopped\n"


def test_a_record_rank_0_could_not_write_is_agreed_on_with_the_signal_and_raised(preemption):
    """One all-reduce after each step carries both: the unwritten record wins over a stop (nothing may be saved
    over a run whose records are incomplete)."""
    from megagpt.errors import StorageError

    preemption._handle(signal.SIGTERM, None)
    with pytest.raises(StorageError, match="metrics.jsonl cannot be written"):
        preemption.agreed(None, StorageError("runs/x/metrics.jsonl cannot be written (No space left on device)"))
    assert not preemption.agreed(preemptible=False) and preemption.why is None  # the last step: nothing to stop


def test_a_marker_that_cannot_be_written_says_the_save_was_made(preemption, tmp_path, capsys):
    from megagpt.errors import StorageError

    preemption._handle(signal.SIGUSR1, None)
    assert preemption.agreed()
    (tmp_path / PREEMPTED).mkdir()  # open(..., "w") fails as on a full disk, naming the file
    with pytest.raises(StorageError) as caught:
        preemption.stop(SimpleNamespace(close=lambda: None, problem=None), str(tmp_path), is_logger=True,
                        saved="step 3 to ckpt")
    assert str(caught.value) == (f"saved step 3 to ckpt, but {tmp_path / PREEMPTED} cannot be written (Is a directory) "
                                 "(a requeued job would not know to continue it)")
    assert capsys.readouterr().out == ""
