import pytest

from launchers.local import existing_world_size
from launchers.slurm_env import expand_nodelist, expand_tasks_per_node, torch_env_from_slurm
from megagpt.slurm import in_slurm_step
from megagpt.errors import SlurmError


@pytest.mark.parametrize("nodelist,hosts", [
    ("node1", ["node1"]),
    ("gpu[01-04,07]", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]),
    ("gpu[09-11],cpu3", ["gpu09", "gpu10", "gpu11", "cpu3"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("a[8-10]", ["a8", "a9", "a10"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_bad_nodelist_is_named():
    with pytest.raises(SlurmError, match="cannot parse Slurm node range 'x-y'"):
        expand_nodelist("gpu[x-y]")


def test_tasks_per_node():
    assert expand_tasks_per_node("4(x2),3") == [4, 4, 3]
    assert expand_tasks_per_node("8") == [8]


MULTI_NODE = {  # task 13 of `srun -N4 --ntasks-per-node=8` on a heterogeneous nodelist
    "SLURM_JOB_ID": "48213", "SLURM_STEP_ID": "0", "SLURM_PROCID": "13", "SLURM_LOCALID": "5", "SLURM_NODEID": "1",
    "SLURM_NTASKS": "32", "SLURM_STEP_NUM_TASKS": "32", "SLURM_JOB_NODELIST": "gpu[01-03,07]",
    "SLURM_STEP_NODELIST": "gpu[01-03,07]", "SLURM_STEP_TASKS_PER_NODE": "8(x4)", "SLURM_TASKS_PER_NODE": "8(x4)",
}


def test_multi_node_task_maps_to_torch_env():
    env = torch_env_from_slurm(MULTI_NODE)
    assert env == {"RANK": "13", "WORLD_SIZE": "32", "LOCAL_RANK": "5", "LOCAL_WORLD_SIZE": "8",
                   "MASTER_ADDR": "gpu01", "MASTER_PORT": str(15000 + 48213 % 17000)}


def test_uneven_nodes_and_explicit_master():
    env = torch_env_from_slurm({**MULTI_NODE, "SLURM_NODEID": "2", "SLURM_STEP_TASKS_PER_NODE": "4(x2),3,2",
                                "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500"})
    assert env["LOCAL_WORLD_SIZE"] == "3" and env["MASTER_ADDR"] == "10.0.0.5" and env["MASTER_PORT"] == "29500"


def test_batch_script_is_not_a_task():
    batch = {**MULTI_NODE, "SLURM_STEP_ID": "batch", "SLURM_PROCID": "0"}
    assert not in_slurm_step(batch) and existing_world_size(batch) is None
    assert in_slurm_step(MULTI_NODE) and existing_world_size(MULTI_NODE) == 32
    assert existing_world_size({"RANK": "1", "WORLD_SIZE": "4"}) == 4


def test_missing_variable_is_named():
    env = dict(MULTI_NODE)
    del env["SLURM_JOB_NODELIST"], env["SLURM_STEP_NODELIST"]
    with pytest.raises(SlurmError, match="SLURM_JOB_NODELIST is not set"):
        torch_env_from_slurm(env)


def test_the_rendezvous_port_is_below_the_ephemeral_range_and_differs_per_step():
    """Linux hands out 32768-60999 to outgoing connections (a port there can be taken when the step binds it), and
    two steps of one job on one node need two ports."""
    from launchers.slurm_env import rendezvous_port

    ports = [rendezvous_port(job, step) for job in range(0, 200000, 997) for step in (None, "0", "1", "batch")]
    assert all(15000 <= p < 32000 for p in ports)
    assert len({rendezvous_port(48213, step) for step in ("0", "1", "2")}) == 3
    assert rendezvous_port(48213, None) == rendezvous_port(48213, "0") == rendezvous_port(48213, "batch")


def test_salloc_s_interactive_step_is_not_a_training_step():
    from megagpt.slurm import in_slurm_step

    assert in_slurm_step({"SLURM_PROCID": "0", "SLURM_STEP_ID": "0"})
    assert not in_slurm_step({"SLURM_PROCID": "0", "SLURM_STEP_ID": "4294967290"})
