"""Starting or joining the world: N local processes (torch elastic), or the one torchrun/srun made."""

from __future__ import annotations

import os
import signal
import sys
from typing import Mapping, Sequence

from launchers.slurm_env import in_slurm_step, torch_env_from_slurm


# Set for the ranks of a local launch: torch elastic starts each in its own session, so
# without this a SIGKILLed launcher would leave them training, racing a restarted run.
DIE_WITH_LAUNCHER = "MEGAGPT_LAUNCHER_PID"


def die_with_launcher() -> None:
    """In a rank of a local launch: ask Linux to SIGKILL this process when the launcher dies."""
    launcher = os.environ.get(DIE_WITH_LAUNCHER)
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(launcher):  # it died before the request was in place
        os._exit(1)


def existing_world_size(env: Mapping[str, str] = os.environ) -> int | None:
    """The world this process was started into by torchrun or srun, if any."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["WORLD_SIZE"])
    if in_slurm_step(env):
        return int(env.get("SLURM_STEP_NUM_TASKS") or env["SLURM_NTASKS"])
    return None


def join_existing_world() -> None:
    """Under srun, translate Slurm's variables once, before torch.distributed reads them."""
    die_with_launcher()
    if "RANK" not in os.environ and in_slurm_step(os.environ):
        os.environ.update(torch_env_from_slurm(os.environ))


def _forward_to_ranks(signum, frame) -> None:
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def launch_local(nproc: int, argv: Sequence[str], preempted_marker: str | None = None) -> int:
    """Run `python -m launchers.cli *argv` as nproc local processes; returns an exit code.

    SIGUSR1 is passed on to every rank (the trainer saves and stops). SIGTERM torch elastic
    passes on itself, then raises; if the ranks left `preempted_marker`, that was a clean stop.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from megagpt.parallel.distributed import free_port

    # 2 cores shared by 8 ranks: more threads per rank only thrash.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ[DIE_WITH_LAUNCHER] = str(os.getpid())
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"megagpt-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=0,
                          monitor_interval=0.1)
    signal.signal(signal.SIGUSR1, _forward_to_ranks)
    try:
        elastic_launch(config, sys.executable)("-m", "launchers.cli", *argv)
    except SignalException as exc:
        if preempted_marker and os.path.exists(preempted_marker):
            return 0
        print(f"megagpt: error: stopped by signal {exc.sigval.name} before the ranks saved", file=sys.stderr)
        return 1
    except ChildFailedError as exc:
        failures = exc.failures
        first = min(failures)
        print(f"megagpt: error: rank {first} of {nproc} failed (exit code {failures[first].exitcode})",
              file=sys.stderr)
        return 1
    return 0
