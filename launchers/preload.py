"""Imported once by the server that forks the ranks of a local CPU launch (launchers.local).

The libraries every rank needs: imported here once, each forked rank starts with them
(importing them is most of a rank's start-up, about 6 s each, 8 ranks on 2 cores). The
server is deaf to the signals meant for the ranks (Slurm signals a job's whole process
group), Ctrl-C included, from its first line: a Ctrl-C during these imports printed their traceback; each rank
takes them back as it starts (launchers.local.rank_main)."""

import signal

for _sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
    signal.signal(_sig, signal.SIG_IGN)

import atexit  # noqa: E402
import os  # noqa: E402

from megagpt.parallel.distributed import quiet_library_warnings  # noqa: E402

quiet_library_warnings()  # before the imports that print them

import deepspeed  # noqa: E402,F401  (DS_ACCELERATOR=cpu is set: DeepSpeed picks its accelerator on import)
import megatron.core.parallel_state  # noqa: E402,F401
import megatron.core.tensor_parallel  # noqa: E402,F401
import torch  # noqa: E402,F401

_SERVER = os.getpid()


@atexit.register
def _exit_now() -> None:
    """The server holds the launcher's stdout and stderr until it is gone: skip torch's C++ teardown at exit,
    which deregisters every operator (1-3 s). Forked ranks inherit this handler; it leaves them alone."""
    if os.getpid() == _SERVER:
        os._exit(0)
