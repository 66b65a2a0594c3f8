"""The two ends of a test worker run: the test launches it, each rank reports one JSON record.

    python -m tests.distributed.workers MODULE WORLD OUT key=value ...

runs MODULE's main(OUT, overrides) on WORLD CPU ranks under torch elastic, forked from a server that has
imported the libraries once, as `megagpt pretrain --nproc` forks its CPU ranks (launchers.local): each rank
importing them itself took about 5 s of the 2 cores a rank.
"""

import importlib
import json
import os
import subprocess
import sys

import torch.distributed as dist

from megagpt.parallel.distributed import free_port
from tests.conftest import CPU_ENV, REPO


def run_worker(module: str, world: int, out, overrides: list[str]) -> list[dict]:
    """Run `module`'s main(OUT, overrides) on `world` CPU ranks; each rank's record, by rank."""
    proc = subprocess.run([sys.executable, "-m", "tests.distributed.workers", module, str(world), str(out),
                           *overrides], cwd=REPO, env={**os.environ, **CPU_ENV}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{module} on {world} ranks failed:\n{proc.stderr[-4000:]}"
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(world)]


def rank_main(module: str, out: str, overrides: list[str]) -> None:
    """A rank, forked from the server as launchers.local forks them: it dies with the launcher, and takes back the
    signals the server ignores (torch elastic ends the other ranks with SIGTERM when one fails)."""
    from launchers.local import die_with_launcher, leave_the_server

    leave_the_server()
    die_with_launcher()
    importlib.import_module(module).main(out, overrides)


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


if __name__ == "__main__":
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from launchers.local import start_rank_server
    from tests.distributed import workers  # rank_main by its module's name: the forked ranks import it so

    name, world, out, *rest = sys.argv[1:]
    start_rank_server(int(world))
    elastic_launch(LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=int(world), run_id=f"worker-{os.getpid()}",
                                rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=0,
                                monitor_interval=0.1, start_method="forkserver"),
                   workers.rank_main)(name, out, rest)
