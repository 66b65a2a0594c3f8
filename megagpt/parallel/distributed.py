"""Joining (or creating) the torch.distributed world."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import warnings

import torch

from megagpt.config import DEVICES, ConfigError
from megagpt.parallel.collectives import audit_from_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_world_size(default: int = 1) -> int:
    """Ranks on this node: torchrun and our Slurm mapping set LOCAL_WORLD_SIZE."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", default))


def resolve_device(requested: str, local_ranks: int) -> str:
    """'cuda' or 'cpu' for every rank of a node running `local_ranks` ranks (run.device).

    Each CUDA rank needs a GPU of its own: NCCL cannot put two ranks on one device. So
    `auto` takes the GPUs only when there is one per local rank, and CPU with gloo
    otherwise (a test with more ranks than GPUs); `cuda` insists on them.
    """
    if requested not in DEVICES:
        raise ConfigError(f"run.device={requested!r} must be one of {', '.join(DEVICES)}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "cuda" and gpus < local_ranks:
        raise ConfigError(f"run.device=cuda needs a GPU per rank: {local_ranks} ranks on this node, {gpus} GPUs "
                          f"visible (run.device=cpu runs them on CPU)")
    if requested == "cpu" or gpus < local_ranks:
        return "cpu"
    return "cuda"


def device_for_local_rank(kind: str) -> torch.device:
    if kind == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# Advice that does not apply to how we use these libraries, printed once per rank.
_KNOWN_NOISE = [
    ".*Transformer Engine and Apex are not installed.*",  # megatron-core: we use neither
    ".*CUDA_DEVICE_MAX_CONNECTIONS.*",  # megatron-core: CUDA stream advice
    ".*c10d::broadcast_: an autograd kernel was not registered.*",  # DeepSpeed's tied-weight sync at start-up
    ".*all_gather_into_tensor. is deprecated.*",  # DeepSpeed ZeRO internals
]


def quiet_library_warnings() -> None:
    for pattern in _KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=pattern)


def init_distributed(requested_device: str = "auto", deepspeed_comm: bool = True) -> torch.device:
    """Join the world described by torch.distributed's environment variables; returns this rank's device.

    A lone process with no such variables becomes a world of one. Under srun, the
    launcher has already translated Slurm's variables (launchers.slurm_env). The
    backend follows the device: NCCL for CUDA ranks, gloo for CPU ranks. Training joins
    through DeepSpeed (its engines need its comm layer); inference (deepspeed_comm=False)
    through torch.distributed alone, without DeepSpeed's start-up.
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    audit_from_env()
    device = device_for_local_rank(resolve_device(requested_device, local_world_size()))
    quiet_library_warnings()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed warns that it fell back to CPU
    if not deepspeed_comm:
        import torch.distributed as dist

        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        return device
    import deepspeed  # slow import: only once we know we train

    # On CPU it print()s "DeepSpeed ... shm_comm_op built successfully" on every rank (verbose=False aside)
    with contextlib.redirect_stdout(io.StringIO()):
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return device


def shutdown_distributed() -> None:
    """Leave the world cleanly: a process that exits with live gloo groups can abort in C++
    teardown ("terminate called without an active exception") after training succeeded."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
