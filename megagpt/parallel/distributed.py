"""Joining (or creating) the torch.distributed world."""

from __future__ import annotations

import os
import socket
import warnings
from datetime import timedelta
from typing import Mapping, Optional

import torch

from megagpt.config import DEVICES, ConfigError
from megagpt.parallel.collectives import audit_from_env
from megagpt.slurm import in_slurm_step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched_as_rank_zero() -> bool:
    """Rank 0 by what the launcher (torch elastic, srun via launchers.slurm_env) set, for a stage that speaks
    before its process group exists; a process run by hand is rank 0."""
    return os.environ.get("RANK", "0") == "0"


def local_world_size(default: int = 1) -> int:
    """Ranks on this node: torchrun and our Slurm mapping set LOCAL_WORLD_SIZE."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", default))


def own_gpu(local_rank: int, local_ranks: int, gpus: int, env: Mapping[str, str]) -> Optional[int]:
    """Which of the `gpus` this process sees is its own, or None where its node has fewer GPUs than ranks.

    Where a rank sees a GPU per local rank (--nproc, torchrun, srun --gpus-per-node) rank r takes GPU r.
    Slurm's per-task binding (srun --gpus-per-task=1, --gpu-bind=single:1) shows each task only its own:
    an srun task that sees too few for that, while its node's ranks times what each sees fit in the step's
    GPUs there (SLURM_GPUS_ON_NODE), takes the first it sees. Measured on slurm 22.05: tasks 0 and 1 of
    such a step see CUDA_VISIBLE_DEVICES=0 and =1, both with SLURM_GPUS_ON_NODE=2. Counts cannot tell
    a binding that puts two tasks on one GPU (--gpu-bind=closest on a crowded socket); NCCL then refuses.
    """
    if gpus >= local_ranks:
        return local_rank
    on_node = int(env.get("SLURM_GPUS_ON_NODE") or 0) if in_slurm_step(env) else 0
    return 0 if 0 < gpus and gpus * local_ranks <= on_node else None


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(requested: str, local_ranks: int) -> str:
    """'cuda' or 'cpu' for every rank of a node running `local_ranks` ranks (run.device).

    Each CUDA rank needs a GPU of its own: NCCL cannot put two ranks on one device. So
    `auto` takes the GPUs only when there is one per local rank (own_gpu), and CPU with gloo
    otherwise (a test with more ranks than GPUs); `cuda` insists on them.
    """
    if requested not in DEVICES:
        raise ConfigError(f"run.device={requested!r} must be one of {', '.join(DEVICES)}")
    gpus = visible_gpus()
    has_own = own_gpu(0, local_ranks, gpus, os.environ) is not None
    world = int(os.environ.get("WORLD_SIZE", local_ranks))
    if requested == "auto" and 0 < gpus and not has_own and world > local_ranks:
        # each node decides alone: a node short of GPUs (one failed, a site's binding) took CPU and gloo while the
        # others took CUDA and NCCL, and the world hung at its first collective
        raise ConfigError(f"run.device=auto: this node sees {gpus} GPU(s) for its {local_ranks} ranks of a world of "
                          f"{world} across nodes, so it alone would run on CPU: give run.device=cuda with a GPU per "
                          f"rank, or run.device=cpu")
    if requested == "cuda" and not has_own:
        raise ConfigError(f"run.device=cuda needs a GPU per rank: {local_ranks} ranks on this node, {gpus} GPUs "
                          f"visible (run.device=cpu runs them on CPU)")
    return "cuda" if requested != "cpu" and has_own else "cpu"


# the GPU a process that no launcher started asked for by index (lone_gpu), read by init_distributed
_lone_gpu: Optional[int] = None


def lone_gpu(device: str) -> str:
    """A device named with its index (lm_eval's --device cuda:N) as run.device: 'cuda', and a process that no
    launcher started takes GPU N when it joins its world of one. A launched world's ranks each take their local
    rank's GPU, whatever the index."""
    global _lone_gpu
    kind, _, index = device.partition(":")
    if kind != "cuda" or not index:
        return device
    if not index.isdigit():
        raise ConfigError(f"device {device!r}: expected cuda:N")
    if "RANK" not in os.environ:
        if int(index) >= visible_gpus():
            raise ConfigError(f"device {device!r}: this process sees {visible_gpus()} GPUs")
        _lone_gpu = int(index)
    return "cuda"


# this process's rank on its node, kept where LOCAL_RANK becomes its GPU (a variable of the process, not of its
# environment: children it starts would inherit that)
node_rank: Optional[int] = None


def device_for_local_rank(kind: str) -> torch.device:
    if kind == "cuda":
        global node_rank
        if node_rank is None:
            node_rank = int(os.environ.get("LOCAL_RANK", 0))
        index = own_gpu(node_rank, local_world_size(), visible_gpus(), os.environ)
        assert index is not None, "resolve_device chose cuda without a GPU for this rank"
        # DeepSpeed takes LOCAL_RANK for the device index (its engine, pipeline module and ZeRO-3 all do), so
        # under Slurm's per-task binding it becomes 0 on every rank; the rank on the node stays in node_rank.
        os.environ["LOCAL_RANK"] = str(index)
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
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


# Every group's timeout (run.dist_timeout_minutes), as init_distributed set it: groups made later (new_group,
# megatron-core's) take the world's, where torch would give an NCCL group 10 minutes.
_timeout = timedelta(minutes=30)


def init_distributed(requested_device: str = "auto", deepspeed_comm: bool = True,
                     timeout_minutes: float = 30.0) -> torch.device:
    """Join the world described by torch.distributed's environment variables; returns this rank's device.

    A lone process with no such variables becomes a world of one. Under srun, the
    launcher has already translated Slurm's variables (launchers.slurm_env). The
    backend follows the device: NCCL for CUDA ranks, gloo for CPU ranks. Training joins
    through DeepSpeed (its engines need its comm layer); inference (deepspeed_comm=False)
    through torch.distributed alone, without DeepSpeed's start-up.
    """
    global _timeout
    _timeout = timedelta(minutes=timeout_minutes)
    if "RANK" not in os.environ:  # a lone process: local rank 0, or the GPU it asked for (lone_gpu)
        os.environ.update(RANK="0", LOCAL_RANK=str(_lone_gpu or 0), WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    audit_from_env()
    device = device_for_local_rank(resolve_device(requested_device, local_world_size()))
    quiet_library_warnings()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed warns that it fell back to CPU
    if not deepspeed_comm:
        import torch.distributed as dist

        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None, timeout=_timeout)
        return device
    import importlib

    import deepspeed  # slow import: only once we know we train

    if device.type == "cpu":
        # DeepSpeed builds its shared-memory all-reduce, a JIT C++ extension, for inference_all_reduce alone,
        # which training never calls. The build holds a lock file in ~/.cache/torch_extensions that a rank
        # killed meanwhile (a Slurm cancel or requeue at start-up) leaves behind: every later run waited on it
        # forever, printing nothing.
        # (the module by name: the attribute deepspeed.comm.torch is the torch package, which it imports)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=_timeout)
    return device


def group_timeout() -> timedelta:
    return _timeout


def new_group(ranks: list[int]):
    """dist.new_group (collective over the world) with the world's timeout."""
    import torch.distributed as dist

    return dist.new_group(ranks, timeout=_timeout)


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
