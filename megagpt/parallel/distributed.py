"""Joining (or creating) the torch.distributed world."""

from __future__ import annotations

import os
import socket
import warnings

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_for_local_rank() -> torch.device:
    if torch.cuda.is_available():
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


def init_distributed() -> torch.device:
    """Join the world described by torch.distributed's environment variables.

    A lone process with no such variables becomes a world of one. Under srun, the
    launcher has already translated Slurm's variables (launchers.slurm_env).
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    device = device_for_local_rank()
    quiet_library_warnings()
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed warns that it fell back to CPU
    import deepspeed  # slow import: only once we know we train

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)
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
