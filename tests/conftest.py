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
