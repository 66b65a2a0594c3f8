"""The planner's bytes against what training really holds: DeepSpeed's model states to the byte
(weights, gradients, optimizer states at ZeRO 0/1/2/3, fp32 and bf16, BF16_Optimizer's fp32 accumulation
buffer at ZeRO 1 included, with padding, and DeepSpeed's gradient buckets), offloaded states in total, and the
activations a forward pass keeps for its backward."""

import pytest

from megagpt.config import load_config
from megagpt.planner.counts import rank_tensors
from megagpt.planner.memory import Layout, model_states, tied_gradient_in_flight
from tests.distributed.workers import run_worker

pytestmark = pytest.mark.slow

# Sizes chosen so that ZeRO pads (dp = 3 divides neither group) and ZeRO 3 both partitions and keeps
# tensors whole (the embedding and fc1/fc2 have more than 1e5 elements, the rest fewer).
MODEL = ["model.num_layers=2", "model.hidden_size=160", "model.num_heads=4", "model.seq_length=24",
         "model.vocab_size=1000", "model.make_vocab_size_divisible_by=64", "train.micro_batch_size=2"]
CASES = [(3, 1, 1, "fp32"), (3, 1, 1, "bf16"), (3, 1, 2, "bf16"), (3, 1, 3, "fp32"), (4, 2, 3, "bf16"), (3, 1, 0, "bf16"),
         (4, 2, 0, "fp32")]


@pytest.mark.parametrize("world,tp,zero,precision", CASES, ids=[f"world{w}-tp{t}-zero{z}-{p}" for w, t, z, p in CASES])
def test_model_states_equal_what_deepspeed_holds(tmp_path, world, tp, zero, precision):
    overrides = [*MODEL, f"parallel.tp={tp}", f"parallel.zero_stage={zero}", f"train.precision={precision}"]
    holdings = run_worker("tests.distributed.deepspeed_holdings", world, tmp_path, overrides)
    cfg = load_config(None, overrides)
    layout = Layout(tp=tp, dp=world // tp, micro_batch=2, zero_stage=zero)
    tensors = rank_tensors(cfg.model, tp, 1, 0)
    for rank in range(world):
        held = holdings[rank]
        planned = model_states(tensors, layout, precision, held["dp_rank"])
        # held between micro-batches; the tied embedding's gradient is alive only inside the backward
        in_flight = tied_gradient_in_flight(tensors, layout, precision)
        assert (held["weights"], held["gradients"] + in_flight, held["optimizer"]) == \
            (planned.weights, planned.gradients, planned.optimizer), f"rank {rank}"


OFFLOADED = [(1, "bf16", False), (1, "fp32", False), (2, "fp32", False), (3, "bf16", False), (3, "fp32", True)]


@pytest.mark.parametrize("zero,precision,params", OFFLOADED,
                         ids=[f"zero{z}-{p}{'-params' if o else ''}" for z, p, o in OFFLOADED])
def test_offloaded_states_total_what_deepspeed_holds(tmp_path, zero, precision, params):
    """ZeRO-Offload at ZeRO 1/2: on a CPU machine both sides are one memory, so the planner's GPU and CPU bytes
    together against everything DeepSpeed holds, to the byte, per rank (which side each tensor lives on is read
    from DeepSpeed's source: megagpt.planner.memory._offloaded). The planner had left out the CPU side's staging
    copy and returning partition (ZeRO 1/2) and the gradient bucket (ZeRO 1 and 3), counted a bf16 gradient beside
    bf16 ZeRO 1's fp32 sums, and put one of ZeRO 3's two fp32 gradient copies on the GPU: both are in CPU memory."""
    overrides = [*MODEL, f"parallel.zero_stage={zero}", f"train.precision={precision}",
                 "parallel.offload_optimizer=true", f"parallel.offload_params={params}"]
    holdings = run_worker("tests.distributed.deepspeed_holdings", 3, tmp_path, overrides)
    layout = Layout(dp=3, micro_batch=2, zero_stage=zero, offload_optimizer=True, offload_params=params)
    tensors = rank_tensors(load_config(None, overrides).model, 1, 1, 0)
    for rank, held in enumerate(holdings):
        planned = model_states(tensors, layout, precision, held["dp_rank"])
        assert held["weights"] + held["gradients"] + held["optimizer"] == \
            planned.weights + planned.gradients + planned.optimizer + planned.offloaded, f"rank {rank}"
