"""launchers.local's environment for the ranks it starts."""

from __future__ import annotations

import os

import pytest

from launchers.local import DIE_WITH_LAUNCHER, _rank_environment


@pytest.mark.parametrize("given,expected", [(None, None), ("", None), (" ", None), ("3", "3")],
                         ids=["unset", "empty", "blank", "set"])
def test_ranks_share_the_cores_unless_told_otherwise(monkeypatch, given, expected):
    """An empty OMP_NUM_THREADS counts as unset: libgomp would reject it and take every core in every rank."""
    for name in ("OMP_NUM_THREADS", DIE_WITH_LAUNCHER):  # set first, so that monkeypatch restores them afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    if given is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", given)
    _rank_environment(8)
    assert os.environ["OMP_NUM_THREADS"] == (expected or str(max(1, (os.cpu_count() or 1) // 8)))
    assert os.environ[DIE_WITH_LAUNCHER] == str(os.getpid())



def test_a_stray_rank_in_the_environment_is_one_line(monkeypatch):
    """RANK and WORLD_SIZE left in a shell, without torchrun's MASTER_ADDR: DeepSpeed went looking for MPI
    (ModuleNotFoundError: mpi4py) and --nproc was ignored."""
    from launchers.local import join_existing_world
    from megagpt.errors import ConfigError

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="RANK=0 and WORLD_SIZE=1 are set, .* but MASTER_ADDR and MASTER_PORT not"):
        join_existing_world()
