"""Tensors handed to collectives live on the rank's device; the device and backend follow the GPUs there."""

import os

import pytest
import torch
import torch.distributed as dist

from megagpt.config import ConfigError
from megagpt.parallel.collectives import CollectiveAudit, any_rank, mean_over
from megagpt.parallel.distributed import own_gpu, resolve_device


@pytest.fixture
def audit(world_of_one):
    audit = CollectiveAudit().install()
    yield audit
    audit.uninstall()


def test_audit_fails_a_tensor_made_without_a_device(audit):
    # What killed the first H100 runs: gloo takes this CPU tensor, NCCL refuses it.
    with pytest.raises(RuntimeError, match="all_reduce was handed a tensor made by torch.tensor with no device"):
        dist.all_reduce(torch.tensor([1.0]), op=dist.ReduceOp.MAX)
    with pytest.raises(RuntimeError, match="broadcast was handed a tensor made by torch.zeros"):
        dist.broadcast(torch.zeros(3), src=0)
    with pytest.raises(RuntimeError, match="all_gather was handed"):
        dist.all_gather([torch.empty(1, device="cpu")], torch.ones(1))


@pytest.mark.parametrize("make, origin", [
    (lambda: torch.tensor([1.0]) * 2, "tensor"),
    (lambda: torch.stack([torch.tensor(1.0), torch.tensor(2.0)]), "tensor"),
    (lambda: torch.zeros_like(torch.tensor([1.0])), "tensor"),
    (lambda: torch.tensor([1]).float(), "tensor"),
    (lambda: torch.tensor([1]).to(torch.float32), "tensor"),
    (lambda: torch.from_numpy(__import__("numpy").ones(2)), "from_numpy"),
])
def test_audit_follows_what_is_computed_from_deviceless_tensors(audit, make, origin):
    """The audit tagged only a factory's own result: each of these passed it, and NCCL refuses every one."""
    with pytest.raises(RuntimeError, match=f"made by torch.{origin} with no device"):
        dist.all_reduce(make())


def test_audit_passes_tensors_placed_on_a_device(audit):
    dist.all_reduce(torch.tensor([1.0], device="cpu"))
    dist.all_reduce(torch.tensor([1.0]).to("cpu"))  # moved explicitly, as `.to(device)` does on a GPU rank
    dist.all_reduce(torch.ones(2, device=torch.device("cpu")) * 3)  # computed from a placed tensor
    dist.all_reduce(torch.ones(2, device=torch.device("cpu")) * torch.tensor(2.0))  # one placed operand places it
    cpu = torch.device("cpu")
    dist.all_reduce(torch.zeros_like(torch.tensor([1.0]), device=cpu))  # given a device: placed
    dist.all_reduce(torch.tensor([1.0]).new_zeros(2, device=cpu))
    placed = torch.ones(2, device=cpu)
    placed.cpu()  # on a CPU rank the tensor itself: still placed
    dist.all_reduce(placed)
    assert audit.calls["all_reduce"] == 7


def test_trainer_collective_helpers_place_their_tensors(audit):
    cpu = torch.device("cpu")
    assert any_rank(True, cpu) and not any_rank(False, cpu)
    assert mean_over(torch.tensor(2.5, device=cpu), None, 1) == 2.5
    assert mean_over(torch.tensor(3.0, device=cpu), dist.group.WORLD, 1) == 3.0


def test_audit_uninstalls_cleanly(world_of_one):
    before = dist.all_reduce
    CollectiveAudit().install().uninstall()
    assert dist.all_reduce is before
    dist.all_reduce(torch.tensor([1.0]))  # no audit: accepted, as gloo does


@pytest.mark.parametrize("requested,gpus,ranks,expected", [
    ("auto", 0, 1, "cpu"), ("auto", 1, 1, "cuda"), ("auto", 8, 8, "cuda"),
    ("auto", 1, 8, "cpu"),  # more ranks than GPUs: never several NCCL ranks on one device
    ("cpu", 8, 8, "cpu"), ("cuda", 2, 2, "cuda"),
])
def test_device_follows_the_gpus_per_node(monkeypatch, requested, gpus, ranks, expected):
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)  # not a task of whatever Slurm step runs pytest
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert resolve_device(requested, ranks) == expected


@pytest.mark.parametrize("gpus", [0, 1])
def test_cuda_without_a_gpu_per_rank_is_one_line(monkeypatch, gpus):
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(ConfigError, match=f"run.device=cuda needs a GPU per rank: 2 ranks on this node, {gpus} GPUs"):
        resolve_device("cuda", 2)


@pytest.mark.parametrize("gpus,expected", [(8, "cuda"), (0, "cpu"), (1, None)])
def test_auto_never_splits_a_world_across_nodes_between_cuda_and_cpu(monkeypatch, gpus, expected):
    """Each node resolves `auto` alone: one that saw too few GPUs took CPU and gloo while the others took CUDA and
    NCCL, and the world hung at its first collective. A node that sees some GPUs, but too few, in a world wider
    than the node is refused; a node without any (a CPU cluster) stays on CPU."""
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    if expected is None:
        with pytest.raises(ConfigError, match="run.device=auto: this node sees 1 GPU.s. for its 8 ranks of a world "
                                              "of 16 across nodes, so it alone would run on CPU"):
            resolve_device("auto", 8)
        monkeypatch.setenv("WORLD_SIZE", "8")  # the world is this node: its ranks all take CPU together
        assert resolve_device("auto", 8) == "cpu"
    else:
        assert resolve_device("auto", 8) == expected


def alone(script: str, env: dict | None = None, timeout: int = 120):
    """`python -c script` from the repository as a process no launcher started (no torch rank variables), on CPU."""
    import subprocess
    import sys

    from tests.conftest import CPU_ENV, REPO

    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                               "MASTER_PORT")}
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**clean, **CPU_ENV, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


# An srun task's view on a node whose step holds two GPUs (slurm 22.05, measured on the local cluster)
STEP = {"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_GPUS_ON_NODE": "2"}


@pytest.mark.parametrize("gpus_seen,on_node,expected", [
    (2, "2", [0, 1]),  # srun --gpus-per-node=2: both tasks see both GPUs
    (1, "2", [0, 0]),  # srun --gpus-per-task=1 (or --gpu-bind=single:1): each sees only its own
    (1, "1", [None, None]),  # one GPU for two tasks: CPU, never two NCCL ranks on one device
])
def test_each_srun_task_takes_its_own_gpu(gpus_seen, on_node, expected):
    env = {**STEP, "SLURM_GPUS_ON_NODE": on_node}
    assert [own_gpu(rank, 2, gpus_seen, env) for rank in range(2)] == expected


def test_a_rank_that_sees_a_gpu_per_local_rank_takes_its_own_in_a_step_too():
    # torchrun inside srun: 2 tasks of a node, --gpus-per-task=4, 4 local ranks each
    assert [own_gpu(rank, 4, 4, {**STEP, "SLURM_GPUS_ON_NODE": "8"}) for rank in range(4)] == [0, 1, 2, 3]
    # 7 of the step's 8 GPUs visible to each of 8 tasks: not a binding, and not a GPU each
    assert {own_gpu(rank, 8, 7, {**STEP, "SLURM_GPUS_ON_NODE": "8"}) for rank in range(8)} == {None}


def test_outside_an_srun_step_a_rank_takes_the_gpu_of_its_index():
    assert [own_gpu(rank, 2, 2, {}) for rank in range(2)] == [0, 1]
    assert [own_gpu(rank, 2, 1, {}) for rank in range(2)] == [None, None]
    # the batch script of a job with 4 GPUs, CUDA_VISIBLE_DEVICES narrowed to one by hand, `--nproc 2`
    batch = {"SLURM_PROCID": "0", "SLURM_GPUS_ON_NODE": "4"}
    assert [own_gpu(rank, 2, 1, batch) for rank in range(2)] == [None, None]


def test_gpus_bound_per_task_are_used_not_left_for_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for key, value in STEP.items():
        monkeypatch.setenv(key, value)
    assert resolve_device("auto", 2) == "cuda" and resolve_device("cuda", 2) == "cuda"
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "1")
    assert resolve_device("auto", 2) == "cpu"


@pytest.mark.parametrize("world,env,says", [
    (None, {}, True),  # the local launcher, before it starts the ranks
    (2, {"RANK": "0"}, True),  # rank 0 of srun's or torchrun's world: no launcher of ours said it
    (2, {"RANK": "1"}, False),
    (2, {"RANK": "0", "MEGAGPT_LAUNCHER_PID": "1"}, False),  # a rank of our launcher, which said it already
])
def test_gpus_left_unused_are_reported_once(monkeypatch, capsys, world, env, says):
    from launchers.cli import report_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for key in ("RANK", "MEGAGPT_LAUNCHER_PID", "SLURM_STEP_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    report_device("auto", 2, world)
    report_device("cpu", 2, world)  # asked for: nothing to say
    assert capsys.readouterr().err == ("megagpt: 2 ranks on this node but 1 GPU visible to each: running on CPU "
                                       "with gloo (run.device=cuda requires a GPU per rank)\n" if says else "")


def test_a_cpu_rank_builds_no_extension_under_a_lock_a_killed_rank_could_leave(tmp_path):
    """DeepSpeed JIT-built its shared-memory all-reduce (inference only) in every CPU rank, under a lock file in
    TORCH_EXTENSIONS_DIR: a rank killed meanwhile (a Slurm requeue at start-up) left it, and every later run
    waited on it forever, printing nothing."""
    extensions = {"TORCH_EXTENSIONS_DIR": str(tmp_path)}
    stale = ("import torch.utils.cpp_extension as c; "
             "open(c._get_build_directory('deepspeed_shm_comm', False) + '/lock', 'w').close()")
    assert alone(stale, extensions).returncode == 0
    start = ("from megagpt.parallel.distributed import init_distributed, shutdown_distributed; "
             "print(init_distributed('cpu')); shutdown_distributed()")
    proc = alone(start, extensions, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "cpu\n", proc.stderr[-2000:]


def test_every_group_waits_run_dist_timeout_minutes():
    """NCCL aborts a rank whose collective waits past its group's timeout: torch gave NCCL groups 10 minutes
    (gloo 30), so a PPO role idle through another's generation, or ranks waiting on a long checkpoint write, were
    due to be killed, on GPUs only. The world, megatron-core's groups and the RLHF roles' groups take the configured
    one."""
    script = """
import torch, torch.distributed as dist
from megagpt.parallel.distributed import init_distributed, new_group, shutdown_distributed
from megagpt.parallel.topology import build_parallel_context
device = init_distributed('cpu', timeout_minutes=42)
pc = build_parallel_context(1, 1, device)
groups = {'world': dist.group.WORLD, 'new': new_group([0]), 'tp': pc.tp_group, 'dp': pc.dp_group}
print(sorted((name, g._get_backend(torch.device('cpu')).options._timeout.total_seconds()) for name, g in groups.items()))
from megatron.core import parallel_state as ps
print(ps._DATA_PARALLEL_GROUP_GLOO)
shutdown_distributed()
"""
    proc = alone(script)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [str([("dp", 2520.0), ("new", 2520.0), ("tp", 2520.0), ("world", 2520.0)]),
                                        "None"]  # and no unused gloo twins of megatron-core's groups


@pytest.mark.parametrize("value", ["0", "-5", ".inf"])
def test_a_non_positive_dist_timeout_is_refused(value):
    from megagpt.config import ConfigError, load_config, validate

    with pytest.raises(ConfigError, match=f"run.dist_timeout_minutes=.* must be a positive number of minutes"):
        validate(load_config(None, [f"run.dist_timeout_minutes={value}"]), 1, check_data=False)


def test_a_lone_process_asking_for_cuda_n_takes_gpu_n(monkeypatch):
    """lm_eval's --device cuda:3 evaluated on GPU 0 (the index was dropped and a lone process is local rank 0)."""
    from megagpt.parallel import distributed

    monkeypatch.setattr(distributed, "visible_gpus", lambda: 4)
    for var in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.lone_gpu("cpu") == "cpu" and distributed.lone_gpu("cuda") == "cuda"
    monkeypatch.setattr(distributed, "_lone_gpu", None)
    assert distributed._lone_gpu is None
    assert distributed.lone_gpu("cuda:3") == "cuda" and distributed._lone_gpu == 3
    assert own_gpu(distributed._lone_gpu, 1, 4, {}) == 3  # what device_for_local_rank takes, init_distributed says
    with pytest.raises(ConfigError, match="device 'cuda:4': this process sees 4 GPUs"):
        distributed.lone_gpu("cuda:4")
    monkeypatch.setattr(distributed, "_lone_gpu", None)
    monkeypatch.setenv("RANK", "1")
    assert distributed.lone_gpu("cuda:0") == "cuda" and distributed._lone_gpu is None  # a launched rank: its own


def test_a_lone_process_joins_as_the_gpu_it_asked_for():
    script = ("import os; from megagpt.parallel import distributed as d; d.visible_gpus = lambda: 4; "
              "d.lone_gpu('cuda:3'); d.init_distributed('cpu', deepspeed_comm=False); print(os.environ['LOCAL_RANK']); "
              "d.shutdown_distributed()")
    proc = alone(script)
    assert proc.returncode == 0 and proc.stdout == "3\n", proc.stderr[-2000:]
