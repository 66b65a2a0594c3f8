"""megagpt's leaner gradient passes (megagpt.parallel.gradients) give DeepSpeed's numbers: BF16_Optimizer's fp32
sums over micro-batches bitwise, and their DP reduction in place bitwise what DeepSpeed's concatenate-reduce-copy-back
gives at dp = 2 (at dp >= 3 the same mean, added in another order); at dp = 1 nothing, where DeepSpeed rounded the
fp32 sums to bf16 and back; a step zeroes the sums once, where DeepSpeed zeroed them twice."""

import pytest

from tests.distributed.workers import run_worker

pytestmark = pytest.mark.slow

MODEL = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=4", "model.seq_length=16",
         "model.vocab_size=500", "model.make_vocab_size_divisible_by=64", "train.micro_batch_size=2",
         "train.precision=bf16", "parallel.zero_stage=1"]


def reduce_on(world: int, out) -> list[dict]:
    return run_worker("tests.distributed.gradient_reduction", world, out, MODEL)


def test_dp_reduction_in_place_equals_deepspeeds_bitwise(tmp_path):
    for rank in reduce_on(2, tmp_path):
        assert (rank["optimizer"], rank["dtype"]) == ("BF16_Optimizer", "torch.float32")
        assert rank["accumulated_alike"] and rank["ours_equal_deepspeed"] and rank["step_zeroes_sums"]
        assert not rank["ours_unchanged"]  # the ranks' gradients differed: the reduction did something


def test_one_dp_rank_keeps_its_fp32_gradient_sums(tmp_path):
    (rank,) = reduce_on(1, tmp_path)
    assert rank["optimizer"] == "BF16_Optimizer"
    assert rank["accumulated_alike"] and rank["ours_unchanged"] and rank["step_zeroes_sums"]
    assert not rank["deepspeed_unchanged"]  # DeepSpeed's round trip through its bf16 wire type
