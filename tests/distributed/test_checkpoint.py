"""Checkpoints: exact resume after SIGKILL, preemption by signal, reshaping, corrupt and incompatible checkpoints."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from tests.conftest import TINY, kill_tree, megagpt, read_jsonl, start, wait_for_step

pytestmark = pytest.mark.slow

STEPS = 10


def pretrain_args(prefix, run_dir, tp=1, pp=1, dp=1, *overrides):
    return ["pretrain", "--config", TINY, "--nproc", str(tp * pp * dp), f"parallel.tp={tp}", f"parallel.pp={pp}",
            f"data.prefixes=[{prefix}]", f"run.dir={run_dir}", "run.tensorboard=false", "train.progress=false",
            f"train.steps={STEPS}", "train.eval_interval=5", "train.eval_samples=16", *overrides]


def training_record(run_dir):
    metrics = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    evals = read_jsonl(os.path.join(run_dir, "eval.jsonl"))
    keys = ("step", "loss", "grad_norm", "lr", "global_batch_size", "consumed_samples", "consumed_tokens")
    return [{k: m[k] for k in keys} for m in metrics], evals


@pytest.mark.parametrize("layout", [(1, 1, 1), (2, 2, 2)], ids=["1-1-1", "2-2-2"])
def test_sigkill_then_resume_is_bitwise_identical(demo_prefix, tmp_path, layout):
    reference = tmp_path / "reference"
    megagpt(*pretrain_args(demo_prefix, reference, *layout))  # no checkpoints at all
    killed = tmp_path / "killed"
    args = pretrain_args(demo_prefix, killed, *layout, "train.save_interval=3")
    proc = start(args)
    wait_for_step(proc, killed, 5)  # the newest checkpoint is step 3; steps 4-5 are lost
    kill_tree(proc)
    # A loaded machine may let the run reach step 6's save before the kill lands: any mid-run checkpoint will do.
    latest = open(killed / "checkpoints" / "latest").read().strip()
    assert latest in ("step_00000003", "step_00000006"), latest
    out = megagpt(*args)
    assert f"resumed from step {int(latest[5:])}" in out.stdout
    assert training_record(killed) == training_record(reference)  # exact floats: bitwise
    assert sorted(os.listdir(killed / "checkpoints"))[:2] == ["latest", "step_00000009"]  # keep_last=2
    assert os.path.isdir(killed / "checkpoints" / "step_00000010")


@pytest.fixture(scope="module")
def uninterrupted_112(demo_prefix, tmp_path_factory):
    """The run at (1,1,2) that no signal stops: what a preempted and continued run must equal."""
    reference = tmp_path_factory.mktemp("uninterrupted") / "run"
    megagpt(*pretrain_args(demo_prefix, reference, 1, 1, 2))
    return training_record(reference)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT], ids=["SIGTERM", "SIGUSR1", "Ctrl-C"])
def test_signal_saves_and_exits_zero_then_continues(demo_prefix, tmp_path, sig, uninterrupted_112):
    run = tmp_path / "preempted"
    args = pretrain_args(demo_prefix, run, 1, 1, 2)  # no periodic saves: only the signal saves
    proc = start(args)
    wait_for_step(proc, run, 2)
    os.kill(proc.pid, sig)  # the launcher passes it to every rank, as Slurm signals every task
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == (130 if sig == signal.SIGINT else 0), output[-3000:]  # Ctrl-C: saved, but interrupted
    assert f"signal {sig.name} received" in output
    assert (run / "PREEMPTED").exists()
    stopped_at = len(read_jsonl(str(run / "metrics.jsonl")))
    assert 2 <= stopped_at < STEPS
    assert open(run / "checkpoints" / "latest").read().strip() == f"step_{stopped_at:08d}"
    megagpt(*args)
    assert not (run / "PREEMPTED").exists()
    assert training_record(run) == uninterrupted_112


def test_sigterm_to_one_rank_saves_and_the_job_ends(demo_prefix, tmp_path, uninterrupted_112):
    """`kill` of one CPU rank (not the launcher): the signalled rank left without handing torch elastic its return
    value, and the launcher and the other rank waited for it forever."""
    import psutil

    run = tmp_path / "preempted"
    args = pretrain_args(demo_prefix, run, 1, 1, 2)
    proc = start(args)
    wait_for_step(proc, run, 2)
    server = [p for p in psutil.Process(proc.pid).children() if "forkserver" in " ".join(p.cmdline())]
    ranks = server[0].children()  # forked from the rank server (launchers/local.py)
    assert len(server) == 1 and len(ranks) == 2
    max(ranks, key=lambda p: p.pid).send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "megagpt: another rank was signalled; saved step" in output, output[-3000:]
    megagpt(*args)
    assert training_record(run) == uninterrupted_112


def test_ctrl_c_in_one_process_saves_and_exits_130(demo_prefix, tmp_path):
    run = tmp_path / "run"
    proc = start(pretrain_args(demo_prefix, run, 1, 1, 1, "train.steps=400", "train.eval_interval=0"))
    wait_for_step(proc, run, 1)
    os.kill(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in output, output[-3000:]  # saved, but interrupted
    stopped_at = len(read_jsonl(str(run / "metrics.jsonl")))
    assert f"signal SIGINT received; saved step {stopped_at} to {run}/checkpoints and stopped" in output
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{stopped_at:08d}"


@pytest.mark.parametrize("nproc", [1, 2])
def test_ctrl_c_while_starting_is_one_line(demo_prefix, tmp_path, nproc):
    """Before training takes Ctrl-C over (to save), it printed the traceback of whatever was importing: 30 to 70
    lines from the launcher, the rank server and each rank."""
    import time

    proc = start(pretrain_args(demo_prefix, tmp_path / "run", 1, 1, nproc))
    time.sleep(1.5)  # importing torch (one process) or preloading the ranks' libraries (the rank server)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: to the whole process group
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in output, output[-3000:]
    assert "megagpt: interrupted" in output


def test_a_resume_may_change_the_micro_batch(demo_prefix, tmp_path, uninterrupted_112):
    """As memory allows at the new layout: the same samples make each step, in other slices."""
    run = tmp_path / "run"
    megagpt(*pretrain_args(demo_prefix, run, 1, 1, 2, "train.steps=4", "train.save_interval=4"))
    out = megagpt(*pretrain_args(demo_prefix, run, 1, 1, 2, "train.micro_batch_size=8"))
    assert "resumed from step 4" in out.stdout
    for ours, theirs in zip(training_record(run)[0], uninterrupted_112[0], strict=True):
        assert ours["step"] == theirs["step"] and ours["consumed_samples"] == theirs["consumed_samples"]
        for key in ("loss", "grad_norm"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-5), (ours["step"], key)


def test_exit_duration_saves_and_the_rerun_continues(demo_prefix, tmp_path, uninterrupted_112):
    """train.exit_duration_minutes: stop as on a signal once the time is up (here after the first step)."""
    run = tmp_path / "timed"
    args = pretrain_args(demo_prefix, run, 1, 1, 2)
    out = megagpt(*args, "train.exit_duration_minutes=1e-4")
    assert f"train.exit_duration_minutes=0.0001 reached; saved step 1 to {run}/checkpoints and stopped" in out.stdout
    assert (run / "PREEMPTED").exists() and len(read_jsonl(str(run / "metrics.jsonl"))) == 1
    # the rerun drops the limit and profiles steps 1-2: from step 2, where it resumes (neither changes the run)
    megagpt(*args, "train.profile_steps=[1,2]")
    assert training_record(run) == uninterrupted_112
    assert sorted(p.name for p in (run / "profile").iterdir())[0] == "rank0-steps2-2.json.gz"


def test_a_deadline_at_the_last_step_just_ends_the_run(demo_prefix, tmp_path):
    run = tmp_path / "done"
    args = pretrain_args(demo_prefix, run, 1, 1, 1, "train.steps=1", "train.save_interval=1")
    out = megagpt(*args, "train.exit_duration_minutes=1e-4")
    assert "reached" not in out.stdout and "megagpt: trained 1 steps" in out.stdout
    assert not (run / "PREEMPTED").exists() and len(read_jsonl(str(run / "metrics.jsonl"))) == 1
    again = megagpt(*args)  # a rerun of the finished run says so
    assert f"megagpt: {run} has trained 1 steps already, train.steps=1 (raise train.steps to continue it)" in \
        again.stdout


def test_a_rerun_with_fewer_steps_trains_nothing_and_changes_no_record(demo_prefix, tmp_path):
    """train.steps below the steps trained: the run says so, warns of no new schedule or sample order, and leaves
    lr_schedule.json and data_epochs.json as the run that trained wrote them (a later resume compares with those)."""
    run = tmp_path / "run"
    args = pretrain_args(demo_prefix, run, 1, 1, 1, "train.save_interval=2", "train.eval_interval=0")
    megagpt(*args, "train.steps=2")
    records = {name: (run / name).read_text() for name in ("lr_schedule.json", "data_epochs.json")}
    again = megagpt(*args, "train.steps=1")
    assert f"megagpt: {run} has trained 2 steps already, train.steps=1 (raise train.steps to continue it)" in \
        again.stdout
    assert "warning" not in again.stderr, again.stderr
    assert {name: (run / name).read_text() for name in records} == records


def test_a_stretched_schedules_warning_names_the_lr_the_next_step_takes(demo_prefix, tmp_path):
    """The warning gave the lr at the tokens consumed before the step, one batch early: 0.003 where the run was
    heading for 0.003, while the step took 2.7e-3 against the old schedule's floor."""
    import re

    run = tmp_path / "run"
    args = pretrain_args(demo_prefix, run, 1, 1, 1, "train.save_interval=4", "train.eval_interval=0",
                         "optim.warmup_tokens=1024")  # a step of 16 x 64
    megagpt(*args, "train.steps=4")
    out = megagpt(*args, "train.steps=6")
    said = re.search(r"the lr at step 5 is (\S+) where the run was heading for (\S+);", out.stderr)
    assert said, out.stderr
    took = read_jsonl(str(run / "metrics.jsonl"))[4]
    assert took["step"] == 5 and float(said[1]) == float(f"{took['lr']:.3g}")
    assert float(said[2]) == pytest.approx(3e-4, rel=1e-3)  # tiny.yaml's floor, where 4 steps of 4 had ended


def first_loss_after(run_dir) -> float:
    return read_jsonl(os.path.join(run_dir, "metrics.jsonl"))[0]["loss"]


def test_another_zero_stage_keeps_dropouts_streams(demo_prefix, tmp_path):
    """The same rank grid at ZeRO 2 from a ZeRO 1 checkpoint, with dropout: each rank's streams are its own, so the
    run goes on bit for bit (they were started afresh: 8e-3 off by step 6). Another grid says they start afresh."""
    dropout = ("model.hidden_dropout=0.1", "model.attention_dropout=0.1")
    saved = tmp_path / "saved"
    megagpt(*pretrain_args(demo_prefix, saved, 1, 1, 1, *dropout, "train.save_interval=5", "train.eval_interval=0"))
    for target, zero in (((1, 1, 1), 2), ((1, 1, 2), 1)):
        resumed = tmp_path / f"resumed-{zero}"
        os.makedirs(resumed / "checkpoints")
        os.symlink(saved / "checkpoints" / "step_00000005", resumed / "checkpoints" / "step_00000005")
        (resumed / "checkpoints" / "latest").write_text("step_00000005\n")
        out = megagpt(*pretrain_args(demo_prefix, resumed, *target, *dropout, f"parallel.zero_stage={zero}",
                                     "train.eval_interval=0"))
        reshaped = "dropout's masks at this layout are drawn from streams started afresh" in out.stdout
        assert reshaped == (target != (1, 1, 1))
    assert training_record(tmp_path / "resumed-2")[0] == training_record(saved)[0][5:]


@pytest.mark.parametrize("source,target,zero", [((2, 2, 2), (1, 1, 1), 1), ((1, 1, 2), (2, 2, 1), 1),
                                                ((1, 1, 1), (2, 1, 2), 1), ((1, 1, 2), (1, 1, 1), 3)],
                         ids=["222-to-111", "112-to-221", "111-to-212", "112-zero3-to-111"])
def test_reshape_continues_the_same_run(demo_prefix, tmp_path, source, target, zero):
    """The resumed run's steps 6-10 against the saving run's own: saving changes nothing (test_sigkill_... shows
    a saving run bitwise equal to one that never saves)."""
    saved = tmp_path / "saved"
    megagpt(*pretrain_args(demo_prefix, saved, *source, f"parallel.zero_stage={zero}", "train.save_interval=5",
                           "train.keep_last=0"))
    resumed = tmp_path / "resumed"
    os.makedirs(resumed / "checkpoints")
    os.symlink(saved / "checkpoints" / "step_00000005", resumed / "checkpoints" / "step_00000005")
    (resumed / "checkpoints" / "latest").write_text("step_00000005\n")
    megagpt(*pretrain_args(demo_prefix, resumed, *target))
    ref, _ = training_record(saved)
    got, _ = training_record(resumed)
    assert [m["step"] for m in got] == list(range(6, STEPS + 1))
    for r, g in zip(ref[5:], got):
        assert g["loss"] == pytest.approx(r["loss"], rel=1e-5, abs=1e-5)
        assert g["consumed_samples"] == r["consumed_samples"] and g["lr"] == r["lr"]


@pytest.mark.parametrize("victim", ["mp_rank_00_model_states.pt", "megagpt.json"])
def test_corrupt_checkpoint_falls_back_to_the_previous_one(demo_prefix, tmp_path, victim):
    run = tmp_path / "run"
    args = pretrain_args(demo_prefix, run, 1, 1, 1, "train.save_interval=4", "train.keep_last=0")
    megagpt(*args, "train.steps=8")
    newest = run / "checkpoints" / "step_00000008"
    data = bytearray((newest / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (newest / victim).write_bytes(bytes(data))
    out = megagpt(*args)
    problem = (f"{newest / victim} fails its sha256 checksum" if victim.endswith(".pt") else
               f"checkpoint {newest}: megagpt.json is corrupt (")
    assert f"skipping checkpoint {newest}: {problem}" in out.stderr
    assert "resumed from step 4" in out.stdout
    assert [m["step"] for m in read_jsonl(str(run / "metrics.jsonl"))] == list(range(1, STEPS + 1))
    evals = read_jsonl(str(run / "eval.jsonl"))  # the run's first held-out loss, not the resumed process's first
    assert evals[0]["step"] == 0 and f"held-out loss {evals[0]['loss']:.3f} -> {evals[-1]['loss']:.3f}" in out.stdout


def test_resume_false_starts_afresh_and_sets_the_earlier_checkpoints_aside(demo_prefix, tmp_path):
    run = tmp_path / "run"
    args = pretrain_args(demo_prefix, run, 1, 1, 1, "train.save_interval=2")
    megagpt(*args, "train.steps=6", "run.tensorboard=true")  # keeps step 4 and 6
    out = megagpt(*args, "train.steps=2", "train.resume=false")
    assert "resumed" not in out.stdout
    aside = run / "checkpoints" / "earlier"
    assert (f"megagpt: train.resume=false: the earlier run's checkpoints (steps 4, 6) and records moved to "
            f"{aside}") in out.stderr
    assert sorted(os.listdir(aside)) == ["checkpoint_io.jsonl", "eval.jsonl", "latest", "metrics.jsonl",
                                         "step_00000004", "step_00000006", "tensorboard"]
    assert not (run / "tensorboard").exists()  # TensorBoard showed both runs as one
    assert [m["step"] for m in read_jsonl(str(aside / "metrics.jsonl"))] == [1, 2, 3, 4, 5, 6]
    # the new run's checkpoint is kept (keep_last no longer prunes it for the earlier run's higher steps)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert [m["step"] for m in read_jsonl(str(run / "metrics.jsonl"))] == [1, 2]
    out = megagpt(*args, "train.steps=3")  # continues the new run, not the earlier one
    assert "resumed from step 2" in out.stdout
    # a Slurm job requeued after preemption continues its run, though its command says train.resume=false
    out = megagpt(*args, "train.steps=4", "train.resume=false", env={"SLURM_RESTART_COUNT": "1"})
    assert "resumed from step 3" in out.stdout and not (run / "checkpoints" / "earlier-2").exists()
    assert [m["step"] for m in read_jsonl(str(run / "metrics.jsonl"))] == [1, 2, 3, 4]


def test_a_rerun_beside_records_of_a_run_that_saved_nothing_sets_them_aside(demo_prefix, tmp_path):
    """train.save_interval's default saves no checkpoint: a second run into the same run.dir (another lr, say)
    replaced the first's metrics.jsonl and eval.jsonl without a word."""
    run = tmp_path / "run"
    args = pretrain_args(demo_prefix, run, 1, 1, 1, "train.steps=2", "train.eval_interval=2")
    megagpt(*args)
    first = read_jsonl(str(run / "metrics.jsonl"))
    out = megagpt(*args, "optim.lr=1e-4")
    aside = run / "checkpoints" / "earlier"
    assert (f"megagpt: no checkpoint to resume: the earlier run's records (metrics.jsonl, eval.jsonl) moved to "
            f"{aside}") in out.stderr
    assert read_jsonl(str(aside / "metrics.jsonl")) == first and len(read_jsonl(str(run / "metrics.jsonl"))) == 2


def keep_documents(source: str, prefix: str, count: int) -> None:
    """A shard at `prefix` of `source`'s first `count` documents, with its tokenizer: a corpus rebuilt smaller."""
    import shutil

    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    ds = IndexedDataset(source)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=ds.index.dtype)
    for i in range(count):
        builder.add_item(torch.from_numpy(ds[i].astype(np.int64)))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    shutil.copy(source + ".tokenizer.json", prefix + ".tokenizer.json")


def test_a_shard_rebuilt_in_place_refuses_the_resume_and_a_fresh_start_indexes_it_anew(demo_prefix, tmp_path):
    """The config names the same path; the run read other data (its sample indices were cached for those)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    documents = len(IndexedDataset(demo_prefix))
    data, run = str(tmp_path / "data"), tmp_path / "run"
    keep_documents(demo_prefix, data, documents)
    args = pretrain_args(data, run, 1, 1, 1, "train.save_interval=2", "train.eval_interval=0")
    megagpt(*args, "train.steps=2")
    keep_documents(demo_prefix, data, documents // 2)
    proc = megagpt(*args, "train.steps=4", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"megagpt: error: run.dir={str(run)!r}: {data} now holds {documents // 2} documents, ")
    assert f"(the run read {documents}, " in line and "train.resume=false" in line
    # afresh in the same run.dir: megatron-core's indices for the old shard are not reused for the new one
    megagpt(*args, "train.steps=2", "train.resume=false")
    assert len(os.listdir(run / "data_cache")) == 2
    # the same data copied elsewhere is the same data: the copy's index cache is the first one's
    copy = str(tmp_path / "copy")
    keep_documents(demo_prefix, copy, documents // 2)
    megagpt(*pretrain_args(copy, tmp_path / "run2", 1, 1, 1, "train.steps=1", "train.eval_interval=0",
                           f"data.cache_dir={run / 'data_cache'}"))
    assert len(os.listdir(run / "data_cache")) == 2


def test_a_resume_may_name_the_same_shard_absolutely(demo_prefix, tmp_path):
    """The run started with a relative prefix (an interactive shell); the job that continues it names it absolutely
    (a Slurm script): the same files, the same run."""
    from tests.conftest import REPO

    run = tmp_path / "run"
    relative = os.path.relpath(demo_prefix, REPO)  # megagpt() runs in REPO
    megagpt(*pretrain_args(relative, run, 1, 1, 1, "train.steps=2", "train.save_interval=2", "train.eval_interval=0"))
    out = megagpt(*pretrain_args(os.path.abspath(demo_prefix), run, 1, 1, 1, "train.steps=3", "train.save_interval=2",
                                 "train.eval_interval=0"))
    assert "resumed from step 2" in out.stdout


def test_a_second_run_into_a_busy_run_dir_refuses_and_leaves_the_first_alone(demo_prefix, tmp_path):
    run = tmp_path / "run"
    args = pretrain_args(demo_prefix, run, 1, 1, 2, "train.steps=400", "train.eval_interval=0")
    proc = start(args)
    try:
        wait_for_step(proc, run, 1)
        second = megagpt(*args, check=False)
        assert second.returncode != 0
        errors = [line for line in second.stderr.splitlines() if line.startswith("megagpt: error: ")]
        assert errors[0].startswith(f"megagpt: error: run.dir={str(run)!r} is in use by another training run (pid ")
        assert all("is in use" not in line for line in errors[1:]), errors  # said once, by rank 0
        assert proc.poll() is None  # the first run trains on
    finally:
        kill_tree(proc)
    steps = [m["step"] for m in read_jsonl(str(run / "metrics.jsonl"))]
    assert steps == list(range(1, len(steps) + 1))  # one run's records, none interleaved


def test_incompatible_checkpoint_is_one_line_error_and_nothing_is_overwritten(demo_prefix, tmp_path):
    run = tmp_path / "run"
    args = pretrain_args(demo_prefix, run, 1, 1, 1, "train.save_interval=5", "train.steps=5")
    megagpt(*args)
    kept = [*(run / "checkpoints").rglob("*"), run / "tokenizer.json"]  # the run's own, which a refusal must not touch
    before = {p: p.stat().st_mtime_ns for p in kept}
    proc = megagpt(*args, "model.hidden_size=128", check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("megagpt: error: checkpoint ") and "model.hidden_size=128 (checkpoint has 64)" in last
    assert {p: p.stat().st_mtime_ns for p in kept} == before


def test_checkpoint_metadata_names_every_file_with_its_checksum(demo_prefix, tmp_path):
    from megagpt.train.checkpoint import sha256_file

    run = tmp_path / "run"
    megagpt(*pretrain_args(demo_prefix, run, 1, 2, 2, "train.save_interval=5", "train.steps=5"))
    path = run / "checkpoints" / "step_00000005"
    meta = json.loads((path / "megagpt.json").read_text())
    assert meta["step"] == 5 and meta["consumed_samples"] == 5 * 16 and meta["layout"]["pp"] == 2
    on_disk = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != "megagpt.json")
    assert sorted(meta["files"]) == on_disk
    assert {"rng/rank_00003.pt", "universal/pp1_tp0.pt"} <= set(on_disk)
    assert all(sha256_file(str(path / name)) == digest for name, digest in meta["files"].items())


def test_no_usable_checkpoint_is_an_error_not_a_silent_fresh_start(demo_prefix, tmp_path):
    run = tmp_path / "run"
    args = pretrain_args(demo_prefix, run, 1, 1, 1, "train.save_interval=4", "train.steps=4")
    megagpt(*args)
    missing = run / "checkpoints" / "step_00000004" / "mp_rank_00_model_states.pt"
    missing.unlink()
    metrics = (run / "metrics.jsonl").read_text()
    proc = megagpt(*args, check=False)
    assert proc.returncode == 2
    assert f"skipping checkpoint {run}/checkpoints/step_00000004: {missing} is missing" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"megagpt: error: no usable checkpoint in {run}/checkpoints "
                                                    f"(see the warnings above); train.resume=false starts afresh")
    assert (run / "metrics.jsonl").read_text() == metrics


# `megagpt` in a process whose files may not grow past 4 MiB (a write beyond fails with EFBIG, as one on a full disk
# fails with ENOSPC): the tiny model's optimizer states (5.6 MB) cannot be saved
SMALL_FILES = (sys.executable, "-c", "import resource, runpy, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20)); "
               "runpy.run_module('launchers.cli', run_name='__main__', alter_sys=True)")


def test_a_save_that_cannot_be_written_is_one_line_and_leaves_the_last_checkpoint_in_charge(demo_prefix, tmp_path):
    """A full disk during a save was torch's "unexpected pos 14336 vs 14230" in a traceback (and at several ranks
    the others waiting at a barrier for the one that raised), and the partial save stayed on the full disk."""
    run = tmp_path / "run"
    args = pretrain_args(demo_prefix, run, 1, 1, 1, "train.save_interval=2", "train.eval_interval=0")
    megagpt(*args, "train.steps=2")
    proc = megagpt(*args, "train.steps=4", check=False, launcher=SMALL_FILES)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    failed, kept = run / "checkpoints" / "step_00000004", run / "checkpoints" / "step_00000002"
    assert proc.stderr.strip().splitlines()[-1] == (
        f"megagpt: error: checkpoint {failed} could not be saved (rank 0: {failed}/zero_pp_rank_0_mp_rank_00_optim_"
        f"states.pt: File too large); the partial save was removed, and the last complete checkpoint is {kept}")
    assert not failed.exists() and (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert not [f for f in os.listdir(run / "checkpoints") if ".tmp." in f]
    out = megagpt(*args, "train.steps=4")
    assert "resumed from step 2" in out.stdout
    assert [m["step"] for m in read_jsonl(str(run / "metrics.jsonl"))] == [1, 2, 3, 4]


def test_without_universal_shards_only_the_saving_layout_loads(demo_prefix, tmp_path):
    run = tmp_path / "run"
    args = pretrain_args(demo_prefix, run, 1, 1, 1, "train.save_interval=4", "train.steps=4",
                         "train.universal_checkpoint=false")
    megagpt(*args)
    assert not (run / "checkpoints" / "step_00000004" / "universal").exists()
    proc = megagpt(*pretrain_args(demo_prefix, run, 1, 1, 2, "train.steps=4"), check=False)
    assert proc.returncode == 2  # refused before any process starts, in one line
    assert "without universal/ shards (train.universal_checkpoint=false); it loads only at that layout" in \
        proc.stderr.strip().splitlines()[-1]


def test_loading_another_layouts_checkpoint_into_zero3_is_refused_before_any_process_starts(demo_prefix, tmp_path):
    run = tmp_path / "run"
    megagpt(*pretrain_args(demo_prefix, run, 1, 1, 1, "train.save_interval=1", "train.steps=1"))
    proc = megagpt(*pretrain_args(demo_prefix, run, 1, 1, 2, "train.steps=2", "parallel.zero_stage=3"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "was written at another layout; loading it into parallel.zero_stage=3 is not supported (use ZeRO 1 or 2 to "
        "reshape)")


def test_ranks_die_with_a_killed_launcher(demo_prefix, tmp_path):
    """Ranks run in their own sessions; left alive they would race the restarted run over run.dir."""
    import psutil

    run = tmp_path / "run"
    proc = start(pretrain_args(demo_prefix, run, 1, 1, 2, "train.steps=200"))
    wait_for_step(proc, run, 1)
    ranks = psutil.Process(proc.pid).children(recursive=True)
    assert len(ranks) >= 2
    # CPU ranks are forked from the server that imported the libraries once (launchers/local.py)
    server = [p for p in psutil.Process(proc.pid).children() if "multiprocessing.forkserver" in " ".join(p.cmdline())]
    assert len(server) == 1 and len(server[0].children()) == 2
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(ranks, timeout=30)
    assert not alive
