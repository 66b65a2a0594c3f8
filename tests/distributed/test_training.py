"""Training runs as users start them: learning on the demo corpus, torchrun and srun worlds, the batch ramp."""

import json
import os
import subprocess
import sys

import pytest

from megagpt.parallel.distributed import free_port
from tests.conftest import CPU_ENV, REPO, TINY, megagpt, read_jsonl

pytestmark = pytest.mark.slow


def test_demo_corpus_is_learned(pretrain_tiny, tmp_path):
    metrics, evals = pretrain_tiny(1, 1, 2, "train.steps=200", "train.eval_interval=100", "run.tensorboard=true",
                                   name="learn")
    assert list((tmp_path / "learn" / "tensorboard").glob("events.out.tfevents.*"))
    assert [e["step"] for e in evals] == [0, 100, 200]
    assert evals[0]["loss"] == pytest.approx(8.32, abs=0.1)  # ln(4096): uniform over the vocabulary
    # measured: 8.31 at step 0, 6.49 at step 100, 6.24 at step 200
    assert evals[1]["loss"] < evals[0]["loss"] - 1.5
    assert evals[2]["loss"] < evals[1]["loss"] - 0.1
    assert evals[2]["loss"] < evals[0]["loss"] - 2.0
    assert len(metrics) == 200 and metrics[-1]["consumed_tokens"] == 200 * 16 * 64
    for key in ("step", "loss", "lr", "grad_norm", "global_batch_size", "consumed_tokens", "tokens_per_s"):
        assert key in metrics[-1]
    # Megatron-LM's TFLOP/s per GPU: the model's FLOPs per token (the planner's count) at this step's speed, over 2 ranks
    from megagpt.config import load_config
    from megagpt.planner import training_flops_per_token

    flops = training_flops_per_token(load_config(TINY).model)
    assert all(m["model_tflops_per_gpu"] == flops * m["tokens_per_s"] / 2 / 1e12 for m in metrics)


def test_batch_ramp_matches_across_layouts(pretrain_tiny):
    ramp = ["train.steps=12", "train.eval_interval=0", "train.batch_ramp_start=8", "train.batch_ramp_increment=4",
            "train.batch_ramp_tokens=2048"]
    single, _ = pretrain_tiny(1, 1, 1, *ramp, name="ramp-1")
    piped, _ = pretrain_tiny(1, 2, 2, *ramp, name="ramp-4")
    # two increments over 2048 tokens: 12 sequences from 1024 consumed tokens (after 2 steps of 8 x 64), 16 from 2048
    assert [m["global_batch_size"] for m in single] == [8, 8, 12, 12, 16, 16, 16, 16, 16, 16, 16, 16]
    for a, b in zip(single, piped):
        assert b["global_batch_size"] == a["global_batch_size"]
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)


def test_torchrun_world_is_joined(single_process, demo_prefix, tmp_path):
    base = single_process("train.steps=5", "train.eval_interval=0")
    run_dir = tmp_path / "torchrun"
    megagpt("pretrain", "--config", TINY, "parallel.tp=2", "parallel.pp=1", "train.steps=5", "train.eval_interval=0",
            f"data.prefixes=[{demo_prefix}]", f"run.dir={run_dir}", "run.tensorboard=false",
            launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                      "--master_port", str(free_port()), "-m", "launchers.cli"))
    got = read_jsonl(str(run_dir / "metrics.jsonl"))
    assert [round(m["loss"], 5) for m in got] == [round(m["loss"], 5) for m in base]


def test_srun_tasks_form_the_world_from_slurm_variables(single_process, demo_prefix, tmp_path):
    """Two processes carrying only the variables srun sets (no RANK/WORLD_SIZE) train together."""
    base = single_process("train.steps=5", "train.eval_interval=0")
    run_dir = tmp_path / "srun"
    slurm = {"SLURM_JOB_ID": "777", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2",
             "SLURM_JOB_NODELIST": "localhost", "SLURM_STEP_NODELIST": "localhost", "SLURM_NODEID": "0",
             "SLURM_STEP_TASKS_PER_NODE": "2", "MASTER_PORT": str(free_port()), **CPU_ENV}
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    cmd = [sys.executable, "-m", "launchers.cli", "pretrain", "--config", TINY, "parallel.tp=1", "parallel.pp=1",
           "train.steps=5", "train.eval_interval=0", f"data.prefixes=[{demo_prefix}]", f"run.dir={run_dir}",
           "run.tensorboard=false", "train.progress=false"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env={**clean, **slurm, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    got = read_jsonl(str(run_dir / "metrics.jsonl"))
    assert [round(m["loss"], 5) for m in got] == [round(m["loss"], 5) for m in base]


def test_bf16_agrees_across_layouts_and_differs_from_fp32(single_process, pretrain_tiny):
    steps = ["train.steps=6", "train.eval_interval=0"]
    fp32 = single_process(*steps)
    single, _ = pretrain_tiny(1, 1, 1, *steps, "train.precision=bf16", name="bf16-1")
    piped, _ = pretrain_tiny(1, 2, 2, *steps, "train.precision=bf16", name="bf16-4")
    for a, b, ref in zip(single, piped, fp32):
        assert b["loss"] == pytest.approx(a["loss"], abs=2e-3)
        assert a["loss"] == pytest.approx(ref["loss"], abs=0.05)
    assert any(a["loss"] != ref["loss"] for a, ref in zip(single, fp32))  # bf16 really ran


def test_bf16_gradients_reduced_in_fp32_give_the_single_process_run(single_process, pretrain_tiny):
    """parallel.grad_reduce_in_fp32 (Megatron-LM's default for bf16): each rank's fp32 micro-batch sums cross DP
    as they are, and two ranks give the one rank's gradient norms (measured: to the bit). DeepSpeed's bf16 wire
    rounds the sums first: up to 1e-3 off."""
    bf16 = ["train.steps=8", "train.eval_interval=0", "train.precision=bf16"]
    single = single_process(*bf16)
    for fp32_wire in (True, False):
        run, _ = pretrain_tiny(1, 1, 2, *bf16, f"parallel.grad_reduce_in_fp32={fp32_wire}",
                               name=f"fp32-wire-{fp32_wire}")
        drift = max(abs(a["grad_norm"] / b["grad_norm"] - 1) for a, b in zip(run, single))
        assert len(run) == len(single) == 8
        if fp32_wire:
            assert drift < 1e-6
            assert all(a["loss"] == pytest.approx(b["loss"], abs=1e-5) for a, b in zip(run, single))
        else:
            assert drift > 1e-5


def test_profiled_steps_leave_a_trace_and_the_same_losses(pretrain_tiny, tmp_path):
    import gzip
    import json

    base, _ = pretrain_tiny(1, 1, 2, "train.steps=4", "train.eval_interval=0", name="plain")
    got, _ = pretrain_tiny(1, 1, 2, "train.steps=4", "train.eval_interval=0", "train.profile_steps=[2,3]",
                           "train.profile_ranks=[1]", name="profiled")
    assert [m["loss"] for m in got] == [m["loss"] for m in base]
    assert [m.get("profiled", False) for m in got] == [False, True, True, False]
    profile = tmp_path / "profiled" / "profile"
    assert sorted(p.name for p in profile.iterdir()) == [
        "rank1-steps2-3.json.gz", "rank1-steps2-3.ops.json", "rank1-steps2-3.txt"]
    ops = json.loads((profile / "rank1-steps2-3.ops.json").read_text())
    assert ops["steps"] == [2, 3] and ops["device"] == "cpu"
    per_step = {o["name"]: o for o in ops["per_step"]}
    # the tiny model at tp=1 runs each of its 4 blocks' 4 linear layers as one addmm a micro-batch (2 per step here)
    assert per_step["aten::addmm"]["calls"] >= 4 * 4 * 2
    assert json.loads(gzip.decompress((profile / "rank1-steps2-3.json.gz").read_bytes()))["traceEvents"]
    assert "Self CPU" in (profile / "rank1-steps2-3.txt").read_text()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_diverged_run_stops_at_the_step_and_names_the_last_checkpoint(demo_prefix, tmp_path, precision):
    """The first step's update (lr 1e30) overflows the weights: step 2's loss is NaN. bf16 runs without
    DeepSpeed's overflow scan (which would skip the step), fp32 never had one: either way the run stops."""
    run_dir = tmp_path / "run"
    proc = megagpt("pretrain", "--config", TINY, "--nproc", "2", "parallel.tp=1", "parallel.pp=1",
                   f"train.precision={precision}", "optim.lr=1e30", "optim.warmup_tokens=0", "train.steps=4",
                   "train.save_interval=1", "train.keep_last=0", f"data.prefixes=[{demo_prefix}]",
                   f"run.dir={run_dir}", "run.tensorboard=false", "train.progress=false", check=False)
    assert proc.returncode == 1
    assert (f"megagpt: error: step 2: loss nan, gradient norm inf: the run diverged (try a lower optim.lr or a "
            f"longer warm-up, and check that step's data); the last checkpoint is {run_dir}/checkpoints/step_00000001"
            in proc.stderr)
    # rank 0's line (the other rank stops alike, silently) and the launcher's, naming whichever rank's exit it
    # saw first; no traceback of torch elastic's
    lines = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(lines) == 2 and lines[0].startswith("megagpt: error: step 2: loss nan")
    assert lines[1] in {f"megagpt: error: rank {rank} of 2 failed (exit code 2)" for rank in (0, 1)}
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000001"]
    assert [m["step"] for m in read_jsonl(str(run_dir / "metrics.jsonl"))] == [1, 2]


# (limit on a file's size, steps of the resume): metrics.jsonl, padded to 1 MiB, fills the disk
FULL_DISKS = {
    # rank 0's metrics.jsonl write was a traceback naming no file ("OSError: [Errno 27] File too large" from a
    # flush), and the other rank's a gloo "Connection closed by peer" at its next collective
    "appending a record": (lambda size: size + 400, 6),
    # the resume rewrites metrics.jsonl (records through the checkpoint's step) on rank 0 before the first step: a
    # traceback on rank 0 alone, as were config.yaml's, lr_schedule.json's and data_epochs.json's
    "rewriting the records at a resume": (lambda size: 1 << 19, 4),  # what else it writes is smaller (tokenizer 263 KB)
}


@pytest.mark.parametrize("when", FULL_DISKS)
def test_a_run_log_on_a_full_disk_stops_every_rank_in_one_line_naming_it(demo_prefix, tmp_path, when):
    run_dir = tmp_path / "run"
    args = ["pretrain", "--config", TINY, "--nproc", "2", "parallel.tp=1", "parallel.pp=1", "train.eval_interval=0",
            f"data.prefixes=[{demo_prefix}]", f"run.dir={run_dir}", "run.tensorboard=false", "train.progress=false"]
    megagpt(*args, "train.steps=2", "train.save_interval=2")
    metrics = run_dir / "metrics.jsonl"
    records = read_jsonl(str(metrics))
    records[0]["pad"] = "x" * (1 << 20)  # kept on resume
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    size_limit, steps = FULL_DISKS[when]
    limit = size_limit(metrics.stat().st_size)
    full_disk = (sys.executable, "-c", "import resource, runpy, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                 f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
                 "runpy.run_module('launchers.cli', run_name='__main__', alter_sys=True)")
    proc = megagpt(*args, f"train.steps={steps}", check=False, launcher=full_disk)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert lines[0] == f"megagpt: error: {metrics} cannot be written (File too large)", proc.stderr[-3000:]
    assert lines[1] in {f"megagpt: error: rank {rank} of 2 failed (exit code 2)" for rank in (0, 1)}
    assert len(lines) == 2
