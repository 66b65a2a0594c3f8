"""Memory savers leave the run unchanged: activation recompute at (2,2,1) and (2,1,2) reproduces the
single process without it, step by step."""

import pytest

pytestmark = pytest.mark.slow

STEPS = ["train.steps=10", "train.eval_interval=0"]
CASES = [("selective", (2, 2, 1)), ("full", (2, 2, 1)), ("selective", (2, 1, 2)), ("full", (2, 1, 2))]


@pytest.fixture(scope="module")
def baseline():
    return {}


@pytest.mark.parametrize("mode,layout", CASES, ids=[f"{m}-tp{t}-pp{p}-dp{d}" for m, (t, p, d) in CASES])
def test_activation_checkpointing_matches_the_single_process(baseline, pretrain_tiny, mode, layout):
    if "run" not in baseline:
        baseline["run"] = pretrain_tiny(1, 1, 1, *STEPS, name="reference")[0]
    reference = baseline["run"]
    other = pretrain_tiny(*layout, *STEPS, f"train.activation_checkpointing={mode}")[0]
    assert len(other) == len(reference) == 10
    for ref, got in zip(reference, other):
        assert got["loss"] == pytest.approx(ref["loss"], abs=1e-5), f"step {ref['step']}"
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), f"step {ref['step']}"


OFFLOAD = [(2, ["parallel.zero_stage=2", "parallel.offload_optimizer=true"]),
           (3, ["parallel.zero_stage=3", "parallel.offload_optimizer=true", "parallel.offload_params=true"])]


@pytest.mark.parametrize("stage,flags", OFFLOAD, ids=["zero2-optimizer", "zero3-optimizer-params"])
def test_cpu_offload_matches_and_resumes(baseline, pretrain_tiny, stage, flags):
    """Optimizer (and at ZeRO-3 parameter) offload at (2,1,2): the same steps, saved at 5 and resumed to 10."""
    if "run" not in baseline:
        baseline["run"] = pretrain_tiny(1, 1, 1, *STEPS, name="reference")[0]
    name = f"offload-zero{stage}"
    pretrain_tiny(2, 1, 2, "train.steps=5", "train.eval_interval=0", "train.save_interval=5", *flags, name=name)
    resumed = pretrain_tiny(2, 1, 2, *STEPS, *flags, name=name)[0]
    assert [m["step"] for m in resumed] == list(range(1, 11))
    for ref, got in zip(baseline["run"], resumed):
        assert got["loss"] == pytest.approx(ref["loss"], abs=1e-5), f"step {ref['step']}"
