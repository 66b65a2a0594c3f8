"""Shared fixtures: the demo shard, and running the `megagpt` CLI as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "demo", "tiny.yaml")
# What every test process gets: one thread (2 cores, many ranks), and no GPU, so CPU tests compare
# CPU runs on a GPU machine too (tests/gpu opt back in by passing CUDA_VISIBLE_DEVICES).
CPU_ENV = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def megagpt(*args: str, timeout: float = 900, check: bool = True, env: dict | None = None,
            launcher: tuple = (sys.executable, "-m", "launchers.cli")) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **CPU_ENV, **(env or {})}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_STEP_ID", "SLURM_PROCID"):
        full_env.pop(var, None)  # a test must not join the world of whatever started pytest
    proc = subprocess.run([*launcher, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"megagpt {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def start(args) -> subprocess.Popen:
    """Start `megagpt *args` in the background, in a session of its own (kill_tree ends it as a node failure would)."""
    env = {**os.environ, **CPU_ENV}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return subprocess.Popen([sys.executable, "-m", "launchers.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_step(proc: subprocess.Popen, run_dir, step: int, timeout: float = 600) -> None:
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isfile(metrics) and len(read_jsonl(metrics)) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (exit {proc.returncode}) before step {step}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout}s")


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every rank at once, as a node failure would (ranks run in their own sessions)."""
    import psutil

    everyone = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in everyone:
        p.kill()
    proc.wait()
    psutil.wait_procs(everyone, timeout=30)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def world_of_one():
    """A gloo world of one process with megatron-core's groups, for building layers and datasets in-process."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megagpt.parallel.distributed import free_port

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(1, 1)
    return ps.get_tensor_model_parallel_group()


@pytest.fixture(scope="session")
def demo_prefix(tmp_path_factory) -> str:
    from megagpt.data.demo_corpus import build_demo_shard

    return build_demo_shard(str(tmp_path_factory.mktemp("demo-data")), vocab_size=4096)


@pytest.fixture(scope="session")
def single_process(demo_prefix, tmp_path_factory):
    """The tiny model's single-process run with the given overrides, trained once per session and shared
    (the run every layout, compile and launch mode is compared with); returns its metrics."""
    runs = {}

    def run(*overrides: str) -> list[dict]:
        if overrides not in runs:
            run_dir = tmp_path_factory.mktemp("single-process") / "run"
            megagpt("pretrain", "--config", TINY, "--nproc", "1", "parallel.tp=1", "parallel.pp=1",
                    f"data.prefixes=[{demo_prefix}]", f"run.dir={run_dir}", "run.tensorboard=false",
                    "train.progress=false", *overrides)
            runs[overrides] = read_jsonl(str(run_dir / "metrics.jsonl"))
        return runs[overrides]

    return run


@pytest.fixture
def pretrain_tiny(demo_prefix, tmp_path):
    """Run the tiny model at a layout; returns (metrics, eval records) read from run.dir."""

    def run(tp: int = 1, pp: int = 1, dp: int = 1, *overrides: str, name: str | None = None, **kw):
        run_dir = tmp_path / (name or f"tp{tp}-pp{pp}-dp{dp}")
        megagpt("pretrain", "--config", TINY, "--nproc", str(tp * pp * dp), f"parallel.tp={tp}", f"parallel.pp={pp}",
                f"data.prefixes=[{demo_prefix}]", f"run.dir={run_dir}", "run.tensorboard=false",
                "train.progress=false", *overrides, **kw)
        evals = run_dir / "eval.jsonl"
        return read_jsonl(str(run_dir / "metrics.jsonl")), (read_jsonl(str(evals)) if evals.exists() else [])

    return run


def corpus_config(crawl_dir, out_dir, *overrides):
    from data_pipeline.config import load_corpus_config

    return load_corpus_config(None, [f"input.paths=[{crawl_dir}/*.warc.gz]", f"output.dir={out_dir}",
                                     "langid.threshold=0.5", "tokenize.vocab_size=2000", "executor.workers=2",
                                     *overrides])


@pytest.fixture(scope="session")
def crawl(tmp_path_factory):
    from data_pipeline.synthetic import write_crawl

    path = tmp_path_factory.mktemp("crawl")
    return path, write_crawl(str(path), files=4, pages=200, seed=0)


@pytest.fixture(scope="session")
def corpus_run(crawl, tmp_path_factory):
    """One uninterrupted pipeline run over the planted crawl: (output dir, truth, summary)."""
    from data_pipeline.pipeline import run

    crawl_dir, truth = crawl
    out = tmp_path_factory.mktemp("corpus")
    summary = run(corpus_config(crawl_dir, out), progress=False)
    return out, truth, summary


# The InstructGPT chain on the tiny GPT, each stage built once per session and only read by tests (a test that
# would write into one copies it first): pretrain -> SFT on the planted demonstrations -> reward model.
RLHF_CONFIGS = os.path.join(REPO, "configs", "rlhf")
_ONE_PROCESS = ("--nproc", "1", "parallel.tp=1", "parallel.pp=1", "run.tensorboard=false", "train.progress=false")


@pytest.fixture(scope="session")
def pretrained_tiny(tmp_path_factory, demo_prefix):
    """The tiny GPT pretrained 60 steps on the demo shard in one process: a run dir to start SFT from (its latest
    checkpoint is step 60). It also keeps step 30 for tests that want a less trained start (test_sft.py); saving
    changes no weights (step 60 is byte-identical to a run that saves only there)."""
    run = tmp_path_factory.mktemp("pretrained") / "run"
    megagpt("pretrain", "--config", TINY, *_ONE_PROCESS, f"data.prefixes=[{demo_prefix}]", f"run.dir={run}",
            "train.steps=60", "train.eval_interval=0", "train.save_interval=30")
    return run


@pytest.fixture(scope="session")
def instruct_data(tmp_path_factory) -> dict[str, str]:
    """demonstrations, comparisons and prompts (megagpt.rlhf.demo_data): paths by name."""
    from megagpt.rlhf.demo_data import write_instruct_data

    return write_instruct_data(str(tmp_path_factory.mktemp("instruct-data")))


@pytest.fixture(scope="session")
def sft_tiny(tmp_path_factory, pretrained_tiny, instruct_data):
    """pretrained_tiny fine-tuned 30 steps on instruct_data's demonstrations: the actor's (and RM's) init."""
    run = tmp_path_factory.mktemp("sft") / "run"
    megagpt("sft", "--config", os.path.join(RLHF_CONFIGS, "sft-tiny.yaml"), *_ONE_PROCESS,
            f"sft.data={instruct_data['demonstrations']}", f"sft.init={pretrained_tiny}", f"run.dir={run}",
            "train.steps=30", "train.save_interval=30")
    return run


@pytest.fixture(scope="session")
def reward_tiny(tmp_path_factory, sft_tiny, instruct_data):
    """The reward model from sft_tiny, 80 steps on instruct_data's comparisons over 2 processes (TP=2)."""
    run = tmp_path_factory.mktemp("rm") / "run"
    megagpt("rm", "--config", os.path.join(RLHF_CONFIGS, "rm-tiny.yaml"), "--nproc", "2", "run.tensorboard=false",
            "train.progress=false", f"rm.data={instruct_data['comparisons']}",
            f"rm.demonstrations={instruct_data['demonstrations']}", f"rm.init={sft_tiny}", f"run.dir={run}",
            "train.steps=80", "train.eval_interval=20", "train.save_interval=80")
    return run
