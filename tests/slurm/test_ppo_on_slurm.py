"""`megagpt submit ppo` on the local Slurm cluster: the same iterations as a local run of the same world."""

from __future__ import annotations

import os

import pytest

from tests.conftest import REPO, TINY, megagpt, read_jsonl
from tests.slurm.test_pretrain_on_slurm import queued, wait_until

pytestmark = pytest.mark.slow
PPO = os.path.join(REPO, "configs", "rlhf", "tiny.yaml")
KEYS = ("step", "reward", "kl", "policy_loss", "value_loss", "ptx_loss", "entropy")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, demo_prefix):
    """A policy (5 pretraining steps) and a reward model (5 steps from it): enough to run PPO, not to learn."""
    from megagpt.rlhf.demo_data import write_instruct_data

    root = tmp_path_factory.mktemp("ppo-slurm")
    files = write_instruct_data(str(root / "data"), comparisons=40)
    common = ["--nproc", "1", "parallel.tp=1", "parallel.pp=1", "run.tensorboard=false", "train.progress=false",
              "train.steps=5", "train.save_interval=5", "train.eval_interval=0"]
    megagpt("pretrain", "--config", TINY, *common, f"data.prefixes=[{demo_prefix}]", f"run.dir={root / 'policy'}")
    megagpt("rm", "--config", os.path.join(REPO, "configs", "rlhf", "rm-tiny.yaml"), *common,
            f"rm.data={files['comparisons']}", f"rm.demonstrations={files['demonstrations']}",
            f"rm.init={root / 'policy'}", f"run.dir={root / 'rm'}")
    return {"root": root, "prompts": files["prompts"], "prefix": demo_prefix}


def ppo_overrides(ck, run_dir):
    return ["rlhf.layout=null", f"rlhf.prompts={ck['prompts']}", f"rlhf.actor_init={ck['root'] / 'policy'}",
            f"rlhf.reward_init={ck['root'] / 'rm'}", f"data.prefixes=[{ck['prefix']}]", f"run.dir={run_dir}",
            "run.tensorboard=false", "train.progress=false", "train.steps=2", "train.save_interval=2"]


def record(run_dir):
    return [{k: m[k] for k in KEYS} for m in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]


def test_submitted_ppo_matches_the_local_run(slurm_cluster, checkpoints, tmp_path):
    megagpt("ppo", "--config", PPO, "--nproc", "2", *ppo_overrides(checkpoints, tmp_path / "local"))
    run = tmp_path / "slurm"
    out = megagpt("submit", "ppo", "--config", PPO, "--nodes", "1", "--cpu-tasks-per-node", "2", "--cpus-per-task",
                  "1", "--time", "00:15:00", "--save-lead", "120", "--partition", "debug", *ppo_overrides(checkpoints, run))
    job = out.stdout.strip()
    assert job.isdigit(), out.stdout
    wait_until(lambda: not queued(job), f"job {job}")
    log = (run / "slurm" / f"megagpt-ppo-{job}.out").read_text()
    assert record(run) == record(tmp_path / "local"), log[-3000:]
    assert (run / "checkpoints" / "step_00000002" / "actor" / "megagpt.json").is_file()
