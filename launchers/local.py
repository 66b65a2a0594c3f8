"""Starting or joining the world: N local processes (torch elastic), or the one torchrun/srun made.

CPU ranks are forked from a server that has imported torch, megatron-core and DeepSpeed once
(multiprocessing's forkserver, preloading launchers.preload): a fresh interpreter per rank spends
most of its start-up importing them. CUDA ranks each start a fresh interpreter: importing DeepSpeed
asks CUDA for its devices (torch.cuda.is_available), and a process forked after that cannot use CUDA.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import traceback
from typing import Mapping, NoReturn, Sequence

from launchers.slurm_env import torch_env_from_slurm
from megagpt import usable_cpus
from megagpt.slurm import in_slurm_step


# Set for the ranks of a local launch: a SIGKILLed launcher would otherwise leave them training (torch
# elastic starts fresh ones in sessions of their own; forked ones are the fork server's), racing a restarted run.
DIE_WITH_LAUNCHER = "MEGAGPT_LAUNCHER_PID"
PRELOAD = "launchers.preload"


def die_with_launcher() -> None:
    """In a rank of a local launch: ask Linux to SIGKILL this process when its parent dies. The parent is the
    launcher, or for CPU ranks the fork server, which exits when the launcher does."""
    launcher = os.environ.get(DIE_WITH_LAUNCHER)
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        os.kill(int(launcher), 0)
    except ProcessLookupError:  # it died before the request was in place
        os._exit(1)


def known_cpu_ranks(requested_device: str) -> bool:
    """Whether run.device puts local ranks on CPU, known without importing torch (which counts GPUs)."""
    return requested_device == "cpu" or (requested_device == "auto" and os.environ.get("CUDA_VISIBLE_DEVICES") == "")


def start_rank_server(nproc: int) -> None:
    """Start the server that forks CPU ranks now, so its imports overlap the launcher's own checks.
    The ranks get the environment as it is here: set it first."""
    from multiprocessing import forkserver

    _rank_environment(nproc)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed picks its accelerator as the server imports it
    forkserver.set_forkserver_preload([PRELOAD])
    forkserver.ensure_running()


def _rank_environment(nproc: int) -> None:
    # 2 cores shared by 8 ranks: more threads per rank only thrash. Set but empty counts as unset (libgomp
    # rejects it and takes every core).
    if not os.environ.get("OMP_NUM_THREADS", "").strip():
        os.environ["OMP_NUM_THREADS"] = str(max(1, usable_cpus() // nproc))
    os.environ[DIE_WITH_LAUNCHER] = str(os.getpid())


def leave_the_server() -> None:
    """First in a rank forked from the server: the signals the server ignores taken back, and its pipe let go."""
    from multiprocessing import forkserver

    # The server lives while any process holds this pipe to it; the launcher's copy alone must, so that the
    # server exits with the launcher and its death signal reaches this rank (die_with_launcher).
    alive = forkserver._forkserver._forkserver_alive_fd
    if alive is not None:
        os.close(alive)
        forkserver._forkserver._forkserver_alive_fd = None
    for sig in (signal.SIGTERM, signal.SIGUSR1):  # the server ignores them
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def rank_main(argv: list[str]) -> None:
    """A CPU rank, forked from the server: it runs the command as a fresh `python -m launchers.cli *argv` would."""
    from launchers.cli import main
    from megagpt.train.pretrain import INTERRUPTED, Preemption

    leave_the_server()
    try:
        main(argv)
    except SystemExit as exc:
        # a failure, which the launcher reports; 0 is a normal return (torch elastic expects one), and so is a stop
        # by Ctrl-C, which the launcher reports as one
        if exc.code and not (Preemption.in_process == signal.SIGINT and exc.code == INTERRUPTED):
            raise
    except Exception:
        # A bug's traceback, which a fresh interpreter would print: torch elastic's copy goes to a log the
        # launcher silences (launch_local), and its own line names only the rank. One write, each line marked
        # with the rank as torchrun marks them, so the other ranks' errors (a peer gone) do not interleave.
        rank = os.environ.get("RANK", "?")
        sys.stderr.write("".join(f"[rank{rank}]: {line}\n" for line in traceback.format_exc().splitlines()))
        sys.stderr.flush()
        raise
    finally:
        atexit._run_exitfuncs()  # a forked process skips them at exit; a fresh interpreter would run them here
    if Preemption.in_process in (signal.SIGTERM, signal.SIGINT):
        # Stopped by SIGTERM or Ctrl-C: where the launcher got it too, torch elastic is closing the ranks, and would
        # wait 30 s for this one at the exit barrier that follows this return. Where this rank alone got it, the
        # launcher waits for its return value, which torch elastic hands on once this returns: then leave (without
        # that value it waited forever).
        def leave() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

        timer = threading.Timer(1.0, leave)
        timer.daemon = True
        timer.start()


def existing_world_size(env: Mapping[str, str] = os.environ) -> int | None:
    """The world this process was started into by torchrun, srun or our launcher, if any."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["WORLD_SIZE"])
    if in_slurm_step(env):
        tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env["SLURM_NTASKS"])
        # a one-task step (`srun --pty bash` on a GPU node, srun -n1) is a lone process: --nproc starts its ranks
        return tasks if tasks > 1 else None
    return None


def join_existing_world(nproc: int = 1) -> int | None:
    """The size of the world torchrun, srun or our launcher started this process into (None: it is alone),
    joined: under srun, Slurm's variables become torch's, once, before the device checks or
    torch.distributed read them. `nproc` (--nproc), where that launcher started the ranks, must be its ranks
    on this node: `srun -N4 --ntasks-per-node=1 megagpt pretrain --nproc 8` trained on one GPU a node."""
    world = existing_world_size()
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if world is not None and "RANK" in os.environ and missing:  # torchrun and our launcher set all four
        from megagpt.errors import ConfigError

        raise ConfigError(f"RANK={os.environ['RANK']} and WORLD_SIZE={os.environ['WORLD_SIZE']} are set, as for a "
                          f"rank of a started world, but {' and '.join(missing)} not: unset RANK and WORLD_SIZE to "
                          f"run alone (--nproc N starts the ranks), or start the ranks with torchrun or srun")
    if world is not None:
        die_with_launcher()
        if "RANK" not in os.environ and in_slurm_step(os.environ):
            os.environ.update(torch_env_from_slurm(os.environ))
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if nproc > 1 and nproc != local:
            from megagpt.errors import ConfigError

            raise ConfigError(f"--nproc {nproc}: this process is one of {world} ranks that srun or torchrun started, "
                              f"{local} on this node, and they start the ranks: give srun --ntasks-per-node={nproc} "
                              f"(torchrun --nproc_per_node={nproc}), or drop --nproc")
    return world


def _forward_to_ranks(signum, frame) -> None:
    import psutil
    from multiprocessing import forkserver

    # Forked ranks are the fork server's children; the launcher's others (multiprocessing's resource
    # tracker) would die of the signal.
    server = forkserver._forkserver._forkserver_pid
    for child in psutil.Process(server).children() if server else psutil.Process().children(recursive=True):
        try:
            child.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def exit_now(code) -> NoReturn:
    """End the `megagpt` command with `code` (a SystemExit code) once its work is done: its exit handlers run and
    its output is flushed, and torch's C++ teardown at interpreter exit, which deregisters every operator
    (1-3 s), is skipped."""
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"), as the interpreter would print it
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launch_local(nproc: int, argv: Sequence[str], device: str, preempted_marker: str | None = None) -> int:
    """Run `python -m launchers.cli *argv` as nproc local processes on `device` (cpu: forked from the rank
    server, see the module docstring); returns an exit code.

    SIGUSR1 is passed on to every rank (the trainer saves and stops). SIGTERM and SIGINT torch elastic
    passes on itself, then raises; if the ranks left `preempted_marker`, that was a clean stop.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from megagpt.parallel.distributed import free_port

    # A failed rank has printed its own error (or traceback), and the launcher names it below: torch elastic's
    # report of the same failure adds only a traceback of its own process watcher.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    forked = device == "cpu"
    if forked:
        start_rank_server(nproc)  # a no-op when the caller started it already
    else:
        _rank_environment(nproc)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"megagpt-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=0,
                          monitor_interval=0.1, start_method="forkserver")
    signal.signal(signal.SIGUSR1, _forward_to_ranks)
    try:
        if forked:
            elastic_launch(config, rank_main)(list(argv))
        else:
            elastic_launch(config, sys.executable)("-m", "launchers.cli", *argv)
    except SignalException as exc:
        if preempted_marker and os.path.exists(preempted_marker):
            from megagpt.train.pretrain import INTERRUPTED

            return INTERRUPTED if exc.sigval == signal.SIGINT else 0  # Ctrl-C: saved, but interrupted
        print(f"megagpt: error: stopped by signal {exc.sigval.name} before the ranks saved", file=sys.stderr)
        from megagpt.train.pretrain import INTERRUPTED

        return INTERRUPTED if exc.sigval == signal.SIGINT else 1
    except ChildFailedError as exc:
        failures = exc.failures
        first = min(failures)
        print(f"megagpt: error: rank {first} of {nproc} failed (exit code {failures[first].exitcode})",
              file=sys.stderr)
        return 1
    return 0
