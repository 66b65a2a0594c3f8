"""One run per directory: the lock names its holder, and a training world refuses together."""

import errno
import fcntl

import pytest
import torch

from megagpt.dir_lock import LOCK, hold, hold_on_rank_zero
from megagpt.errors import ConfigError


def test_a_held_directory_refuses_a_second_holder_naming_the_first(tmp_path):
    first = hold(str(tmp_path / "run"), "run.dir", "training run")
    with pytest.raises(ConfigError, match=r"run.dir='.*run' is in use by another training run \(pid \d+ on .+\); "
                                          r"wait for it or use another run.dir \(if that process is gone"):
        hold(str(tmp_path / "run"), "run.dir", "training run")
    first.close()  # the lock goes with its holder
    hold(str(tmp_path / "run"), "run.dir", "training run").close()


def test_every_rank_raises_when_rank_zero_cannot_hold(tmp_path, world_of_one):
    first = hold(str(tmp_path), "run.dir", "training run")
    with pytest.raises(ConfigError, match="in use by another training run") as raised:
        hold_on_rank_zero(str(tmp_path), "run.dir", "training run", torch.device("cpu"))
    assert raised.value.same_on_every_rank  # printed once, by rank 0
    first.close()
    hold_on_rank_zero(str(tmp_path), "run.dir", "training run", torch.device("cpu")).close()


def test_a_file_system_without_flock_runs_unguarded_with_a_warning(tmp_path, monkeypatch, capsys):
    def no_locks(handle, flags):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    hold(str(tmp_path), "output.dir", "corpus run").close()
    assert f"megagpt: warning: {tmp_path} cannot be locked (No locks available)" in capsys.readouterr().err
    assert (tmp_path / LOCK).exists()


def test_a_file_not_a_directory_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"output.dir='.*f' is a file, not a directory"):
        hold(str(tmp_path / "f"), "output.dir", "corpus run")
