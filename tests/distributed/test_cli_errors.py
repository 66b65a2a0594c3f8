"""Bad input ends `megagpt` with one line naming the key and value, before any process or file is made."""

import os
import re
import sys

import pytest

from tests.conftest import TINY, megagpt

CASES = [
    (["--nproc", "8", "parallel.tp=3"], "parallel.tp=3 must divide model.num_heads=4"),
    (["--nproc", "6"], "world size 6 must be a multiple of parallel.tp*parallel.pp=2*2"),
    (["--nproc", "8", "parallel.pp=3"], "parallel.pp=3 must divide model.num_layers=4"),
    (["--nproc", "8", "train.global_batch_size=6"], "train.global_batch_size=6 must be a multiple"),
    (["--nproc", "8", "model.vocab_size=4095", "model.make_vocab_size_divisible_by=1"],
     "parallel.tp=2 must divide the padded vocab 4095"),
    (["--nproc", "8", "data.prefixes=[/no/such/shard]"], "data.prefixes[0]='/no/such/shard': /no/such/shard.bin not found"),
    (["--nproc", "8", "model.hidden_sise=64"], "unknown config key model.hidden_sise=64"),
    (["--nproc", "8", "model.num_layers=four"], "model.num_layers='four' is not a valid int"),
    (["--nproc", "8", "model.num_layers"], "malformed override 'model.num_layers'"),
    (["--nproc", "8", "parallel.offload_params=true"], "parallel.offload_params=true needs parallel.zero_stage=3"),
    (["--nproc", "8", "train.activation_checkpointing=some"],
     "train.activation_checkpointing='some' must be none, selective or full"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[c[1][:40] for c in CASES])
def test_bad_input_is_one_line_before_any_work(tmp_path, args, message):
    run_dir = tmp_path / "run"
    proc = megagpt("pretrain", "--config", TINY, f"run.dir={run_dir}", *args, check=False, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize("args,message", [
    (["pretrain", "--config", TINY, "--nproc", "0"], "--nproc 0 must be at least 1"),
    (["pretrain", "--config", TINY, "--nproc", "-2"], "--nproc -2 must be at least 1"),
    (["generate", "--checkpoint", "x", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens 0 must be at least 1"),
    (["pretrain", "--config", TINY, "--dry-run", "--gpus", "0"], "--gpus 0: plan for at least one GPU")])
def test_a_count_below_one_is_a_one_line_error(args, message):
    proc = megagpt(*args, check=False, timeout=60)
    assert proc.returncode == 2 and proc.stderr == f"megagpt: error: {message}\n"


def test_missing_config_file(tmp_path):
    proc = megagpt("pretrain", "--config", str(tmp_path / "none.yaml"), check=False, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == f"megagpt: error: config file {tmp_path / 'none.yaml'} not found"


def test_tokenize_bad_jsonl_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    proc = megagpt("tokenize", "--input", str(bad), "--output-prefix", str(tmp_path / "out"), "--vocab-size", "300",
                   check=False, timeout=60)
    assert proc.returncode == 2 and f"{bad}:2: not a JSON object" in proc.stderr
    bad.write_text('{"text": "fine"}\n{"text": 5}\n')  # a TypeError traceback, with the shard's temporaries left
    proc = megagpt("tokenize", "--input", str(bad), "--output-prefix", str(tmp_path / "out"), "--vocab-size", "300",
                   check=False, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == f"megagpt: error: {bad}:2: its 'text' is 5, not a string"
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]


def test_fp16_on_cpu_is_refused_before_the_ranks_start(tmp_path, demo_prefix):
    """Each rank said it, then the launcher ("rank 0 of 2 failed")."""
    proc = megagpt("pretrain", "--config", TINY, "--nproc", "2", "parallel.tp=1", "parallel.pp=1",
                   "train.precision=fp16", f"data.prefixes=[{demo_prefix}]", f"run.dir={tmp_path}",
                   check=False, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "megagpt: error: train.precision=fp16 needs a GPU (DeepSpeed has no fp16 on CPU); use fp32 or bf16")


# files beyond 400 KiB cannot be written, as on a full disk (the tokenizer copied into run.dir is 257 KiB)
SMALL_FILES = (sys.executable, "-c", "import resource, runpy, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (400 << 10, 400 << 10)); "
               "runpy.run_module('launchers.cli', run_name='__main__', alter_sys=True)")


def test_a_sample_index_cache_on_a_full_disk_is_one_line_from_every_rank(tmp_path, demo_prefix):
    """Rank 0 raised megatron-core's "Failed to write dataset materials to the data cache directory" in a traceback,
    and the other rank, left at megatron-core's barrier, one of gloo's "Connection closed by peer"."""
    proc = megagpt("pretrain", "--config", TINY, "--nproc", "2", "parallel.tp=1", "parallel.pp=1", "train.steps=4000",
                   "train.eval_interval=0", f"data.prefixes=[{demo_prefix}]", f"run.dir={tmp_path}/run",
                   "run.tensorboard=false", "train.progress=false", check=False, timeout=300, launcher=SMALL_FILES)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 2, proc.stderr[-3000:]
    assert re.fullmatch(rf"megagpt: error: the sample index cache {tmp_path}/run/data_cache/[0-9a-f]{{16}} cannot be "
                        r"written \(a short write, \d+ requested and \d+ written: a full disk, or a quota\?\): give "
                        r"data.cache_dir a directory this run can write", lines[0]), lines[0]
    assert lines[1] in {f"megagpt: error: rank {rank} of 2 failed (exit code 2)" for rank in (0, 1)}
