"""Memory savers leave the run unchanged: activation recompute and sequence parallelism at (2,2,1) and
(2,1,2) reproduce the single process without them, step by step."""

import pytest

pytestmark = pytest.mark.slow

STEPS = ["train.steps=10", "train.eval_interval=0"]
CASES = [("selective", (2, 2, 1)), ("full", (2, 2, 1)), ("selective", (2, 1, 2)), ("full", (2, 1, 2))]


@pytest.mark.parametrize("mode,layout", CASES, ids=[f"{m}-tp{t}-pp{p}-dp{d}" for m, (t, p, d) in CASES])
def test_activation_checkpointing_matches_the_single_process(single_process, pretrain_tiny, mode, layout):
    reference = single_process(*STEPS)
    other = pretrain_tiny(*layout, *STEPS, f"train.activation_checkpointing={mode}")[0]
    assert len(other) == len(reference) == 10
    for ref, got in zip(reference, other):
        assert got["loss"] == pytest.approx(ref["loss"], abs=1e-5), f"step {ref['step']}"
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), f"step {ref['step']}"


OFFLOAD = [(2, ["parallel.zero_stage=2", "parallel.offload_optimizer=true"]),
           (3, ["parallel.zero_stage=3", "parallel.offload_optimizer=true", "parallel.offload_params=true"])]


@pytest.mark.parametrize("stage,flags", OFFLOAD, ids=["zero2-optimizer", "zero3-optimizer-params"])
def test_cpu_offload_matches_and_resumes(single_process, pretrain_tiny, stage, flags):
    """Optimizer (and at ZeRO-3 parameter) offload at (2,1,2): the same steps, saved at 5 and resumed to 10."""
    name = f"offload-zero{stage}"
    pretrain_tiny(2, 1, 2, "train.steps=5", "train.eval_interval=0", "train.save_interval=5", *flags, name=name)
    resumed = pretrain_tiny(2, 1, 2, *STEPS, *flags, name=name)[0]
    assert [m["step"] for m in resumed] == list(range(1, 11))
    for ref, got in zip(single_process(*STEPS), resumed):
        assert got["loss"] == pytest.approx(ref["loss"], abs=1e-5), f"step {ref['step']}"


SEQUENCE_PARALLEL = [((2, 2, 1), []), ((2, 1, 2), []),
                     ((2, 1, 2), ["parallel.zero_stage=3", "train.activation_checkpointing=full"])]


@pytest.mark.parametrize("layout,flags", SEQUENCE_PARALLEL, ids=["tp2-pp2-dp1", "tp2-pp1-dp2", "tp2-dp2-zero3-full"])
def test_sequence_parallelism_matches_the_single_process(single_process, pretrain_tiny, layout, flags):
    """Each TP rank holds half the sequence between the matmuls; LayerNorm and bias gradients summed over TP."""
    reference = single_process(*STEPS)
    got = pretrain_tiny(*layout, *STEPS, "parallel.sequence_parallel=true", *flags)[0]
    assert len(got) == len(reference) == 10
    for ref, other in zip(reference, got):
        assert other["loss"] == pytest.approx(ref["loss"], abs=1e-5), f"step {ref['step']}"
        assert other["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), f"step {ref['step']}"


def test_sequence_parallel_dropout_is_replayed_by_full_recompute(pretrain_tiny):
    """With dropout each TP rank draws masks for its own tokens; recomputing a block draws them again exactly."""
    drop = ["train.steps=5", "train.eval_interval=0", "model.hidden_dropout=0.1", "parallel.sequence_parallel=true"]
    kept = pretrain_tiny(2, 1, 1, *drop, name="sp-dropout")[0]
    redone = pretrain_tiny(2, 1, 1, *drop, "train.activation_checkpointing=full", name="sp-dropout-full")[0]
    assert [m["loss"] for m in redone] == pytest.approx([m["loss"] for m in kept], abs=1e-6)
