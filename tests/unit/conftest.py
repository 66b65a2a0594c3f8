import pytest
import torch.distributed as dist


@pytest.fixture(scope="session")
def world_of_one():
    """A gloo world of one process with megatron-core's groups, for building layers in-process."""
    from megatron.core import parallel_state as ps

    from megagpt.parallel.distributed import free_port

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(1, 1)
    return ps.get_tensor_model_parallel_group()
