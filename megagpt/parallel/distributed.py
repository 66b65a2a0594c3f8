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


def init_distributed() -> torch.device:
    """Join the world described by torch.distributed's environment variables.

    A lone process with no such variables becomes a world of one. Under srun, the
    launcher has already translated Slurm's variables (launchers.slurm_env).
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    device = device_for_local_rank()
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    import deepspeed  # slow import: only once we know we train

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)
    return device
