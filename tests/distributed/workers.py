"""The two ends of a test worker run under torchrun: the test launches it, each rank reports one JSON record."""

import json
import os
import subprocess
import sys

import torch.distributed as dist

from megagpt.parallel.distributed import free_port
from tests.conftest import CPU_ENV, REPO


def run_worker(module: str, world: int, out, overrides: list[str]) -> list[dict]:
    """Run `python -m module OUT overrides...` on `world` CPU ranks; each rank's record, by rank."""
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port",
                    str(free_port()), "-m", module, str(out), *overrides],
                   cwd=REPO, env={**os.environ, **CPU_ENV}, check=True, capture_output=True, timeout=300)
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(world)]


def engine_for(overrides: list[str], micro_batches: int):
    """In the worker, first: join the CPU world and build the DeepSpeed engine `megagpt pretrain` builds, for
    `micro_batches` micro-batches a step. Returns (config, parallel context, engine)."""
    from megagpt.config import load_config
    from megagpt.parallel.distributed import init_distributed, quiet_library_warnings
    from megagpt.parallel.parallelize import parallelize
    from megagpt.parallel.topology import build_parallel_context

    quiet_library_warnings()
    device = init_distributed("cpu")
    cfg = load_config(None, overrides)
    pc = build_parallel_context(cfg.parallel.tp, cfg.parallel.pp, device)
    engine, _ = parallelize(cfg, pc, global_batch_size=micro_batches * cfg.train.micro_batch_size * pc.dp)
    return cfg, pc, engine


def report(out: str, record: dict) -> None:
    """In the worker, last: this rank's record, then the world ends together."""
    with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(record, f)
    dist.barrier()
    dist.destroy_process_group()
