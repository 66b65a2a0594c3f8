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
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))  # 16 of the machine's CPUs are ours
    _rank_environment(8)
    assert os.environ["OMP_NUM_THREADS"] == (expected or "2")
    assert os.environ[DIE_WITH_LAUNCHER] == str(os.getpid())


def test_cores_are_those_the_process_may_run_on_not_the_machines(monkeypatch):
    """A 4-core Slurm allocation on a 64-core node: the machine's count oversubscribed it 16 times."""
    from data_pipeline.executors import LocalExecutor
    from megagpt import usable_cpus

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6, 7})
    assert usable_cpus() == 4 and LocalExecutor(None, progress=False).workers == 4
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv(DIE_WITH_LAUNCHER, "")
    _rank_environment(2)
    assert os.environ["OMP_NUM_THREADS"] == "2"



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


def test_nproc_must_be_the_ranks_srun_started_per_node(monkeypatch):
    """`srun -N4 --ntasks-per-node=1 megagpt pretrain --nproc 8` trained with one rank, on GPU 0, per node: srun
    starts the ranks, and --nproc was silently ignored. A one-task step (`srun --pty bash` on a GPU node) is a
    lone process, whose --nproc starts the ranks."""
    from launchers import local
    from launchers.local import existing_world_size, join_existing_world
    from megagpt.errors import ConfigError
    from tests.unit.test_slurm_env import MULTI_NODE

    monkeypatch.setattr(local, "die_with_launcher", lambda: None)  # (this test process is not a rank)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "")  # recorded, so that what join_existing_world writes is undone after the test
        monkeypatch.delenv(name)
    four_nodes = {**MULTI_NODE, "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "1(x4)",
                  "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
    for name, value in four_nodes.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="--nproc 8: this process is one of 4 ranks that srun or torchrun started, "
                                          "1 on this node.*srun --ntasks-per-node=8"):
        join_existing_world(8)
    assert join_existing_world(1) == 4 and os.environ["RANK"] == "1"  # without --nproc: srun's world
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert join_existing_world(8) == 4  # --nproc equal to srun's ranks per node: consistent
    assert existing_world_size({**four_nodes, "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"}) is None
