"""Every collective a training run makes is handed tensors placed on the rank's device.

The runs go through MEGAGPT_AUDIT_COLLECTIVES (megagpt.parallel.collectives): any tensor
made with no device that reaches a collective fails the rank, as NCCL would on a GPU.
Covered: training steps, held-out eval, the preemption check, checkpoint save, and a
resume that reshapes the checkpoint to another layout and ZeRO stage.
"""

import json

import pytest

from tests.conftest import TINY, megagpt

pytestmark = pytest.mark.slow


def _reports(path, ranks):
    files = sorted(path.glob("rank_*.json"))
    assert len(files) == ranks
    return [json.loads(f.read_text()) for f in files]


def test_training_eval_save_and_reshaped_resume_pass_the_audit(demo_prefix, tmp_path):
    run_dir = tmp_path / "run"
    common = ["--config", TINY, f"data.prefixes=[{demo_prefix}]", f"run.dir={run_dir}", "run.tensorboard=false",
              "train.progress=false", "train.eval_interval=2", "train.save_interval=2"]
    first = tmp_path / "audit-first"
    megagpt("pretrain", "--nproc", "8", *common, "train.steps=2", env={"MEGAGPT_AUDIT_COLLECTIVES": str(first)})
    for report in _reports(first, 8):
        calls = report["calls"]
        assert calls["all_reduce"] > 0 and calls["send"] + calls["recv"] > 0  # TP, DP and pipeline traffic seen
    second = tmp_path / "audit-second"
    proc = megagpt("pretrain", "--nproc", "4", *common, "train.steps=3", "parallel.pp=1", "parallel.zero_stage=2",
                   env={"MEGAGPT_AUDIT_COLLECTIVES": str(second)})
    assert "resumed from step 2" in proc.stdout
    for report in _reports(second, 4):
        assert report["calls"]["all_reduce"] > 0


def test_cuda_without_gpus_is_refused_before_any_process_starts(demo_prefix, tmp_path):
    proc = megagpt("pretrain", "--config", TINY, "--nproc", "2", "parallel.tp=1", "parallel.pp=1",
                   f"data.prefixes=[{demo_prefix}]", f"run.dir={tmp_path}", "run.device=cuda", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "megagpt: error: run.device=cuda needs a GPU per rank: 2 ranks on this node, 0 GPUs visible "
        "(run.device=cpu runs them on CPU)"]
