"""`megagpt submit pretrain` on the local Slurm cluster: same losses as a local run, through a preemption too."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.conftest import TINY, megagpt, read_jsonl

pytestmark = pytest.mark.slow

STEPS = 8


def layout_args(prefix, run_dir):
    return ["parallel.tp=1", "parallel.pp=2", f"data.prefixes=[{prefix}]", f"run.dir={run_dir}",
            "run.tensorboard=false", "train.progress=false", f"train.steps={STEPS}", "train.eval_interval=4",
            "train.eval_samples=16"]


def submit(prefix, run_dir) -> str:
    out = megagpt("submit", "pretrain", "--config", TINY, "--nodes", "1", "--cpu-tasks-per-node", "2",
                  "--cpus-per-task", "1", "--time", "00:15:00", "--save-lead", "120", "--partition", "debug", *layout_args(prefix, run_dir))
    job = out.stdout.strip()
    assert job.isdigit(), out.stdout
    return job


def queued(job: str) -> bool:
    proc = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def wait_until(predicate, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def steps_logged(run_dir) -> int:
    path = os.path.join(run_dir, "metrics.jsonl")
    return len(read_jsonl(path)) if os.path.isfile(path) else 0


def losses(run_dir):
    return [(m["step"], m["loss"], m["grad_norm"]) for m in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]


def job_log(run_dir, job) -> str:
    with open(os.path.join(run_dir, "slurm", f"megagpt-pretrain-{job}.out")) as f:
        return f.read()


@pytest.fixture
def local_reference(demo_prefix, tmp_path):
    run = tmp_path / "local"
    megagpt("pretrain", "--config", TINY, "--nproc", "2", *layout_args(demo_prefix, run))
    return losses(run)


def test_submitted_pretrain_matches_the_local_run(slurm_cluster, demo_prefix, tmp_path, local_reference):
    run = tmp_path / "slurm"
    job = submit(demo_prefix, run)
    wait_until(lambda: not queued(job), f"job {job}")
    assert losses(run) == local_reference, job_log(run, job)
    assert "restart 0" in job_log(run, job)


def test_preempted_job_saves_requeues_and_finishes_the_same_run(slurm_cluster, demo_prefix, tmp_path, local_reference):
    run = tmp_path / "preempted"
    job = submit(demo_prefix, run)
    wait_until(lambda: steps_logged(run) >= 2, "two steps")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)  # what --signal=USR1@<lead> does near the limit
    wait_until(lambda: not queued(job) and steps_logged(run) == STEPS, f"job {job} to be requeued and finish")
    log = job_log(run, job)
    assert "signal SIGUSR1 received; saved step" in log and "requeueing it" in log, log
    assert "restart 1" in log and "resumed from step" in log, log
    assert losses(run) == local_reference
