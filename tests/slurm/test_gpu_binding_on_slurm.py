"""Which GPU each rank of an srun step takes, however Slurm hands the GPUs out: the local cluster's node has two
stand-in GPUs (slurm/local-cluster.sh), so Slurm sets each task's CUDA_VISIBLE_DEVICES as it would on a GPU node,
and the count of entries there stands in for torch.cuda.device_count()."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import CPU_ENV, REPO

PROBE = """
import os
from launchers.local import join_existing_world
from megagpt.parallel.distributed import own_gpu
join_existing_world()
env = os.environ
seen = env.get("CUDA_VISIBLE_DEVICES", "")
print(env["LOCAL_RANK"], seen or "-", own_gpu(int(env["LOCAL_RANK"]), int(env["LOCAL_WORLD_SIZE"]),
                                               len(seen.split(",")) if seen else 0, env))
"""


@pytest.fixture(scope="module")
def two_gpus(slurm_cluster):
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True).stdout
    if "gpu:2" not in gres:
        pytest.skip(f"the local cluster's node has no stand-in GPUs (sinfo: {gres.strip()})")


@pytest.mark.parametrize("flags,expected", [
    (["--gpus-per-node=2"], {"0 0,1 0", "1 0,1 1"}),
    (["--gpus-per-task=1"], {"0 0 0", "1 1 0"}),
    (["--gpus-per-node=2", "--gpu-bind=single:1"], {"0 0 0", "1 1 0"}),
    (["--gpus-per-node=1"], {"0 0 None", "1 0 None"}),  # one GPU for two tasks: CPU
    ([], {"0 - None", "1 - None"}),
], ids=["per-node", "per-task", "gpu-bind", "shared", "none"])
def test_each_task_takes_its_own_gpu(two_gpus, flags, expected):
    env = {**os.environ, **CPU_ENV}  # CUDA_VISIBLE_DEVICES="": what a task sees is what Slurm set
    proc = subprocess.run(["srun", "--nodes=1", "--ntasks=2", *flags, sys.executable, "-c", PROBE], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(proc.stdout.strip().splitlines()) == expected
