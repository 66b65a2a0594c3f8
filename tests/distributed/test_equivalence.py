"""Every layout reproduces the single-process run: same losses and gradient norms, step by step."""

import pytest

pytestmark = pytest.mark.slow

STEPS = ["train.steps=20", "train.eval_interval=0"]
LAYOUTS = [(2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1), (2, 2, 2)]


def assert_same_run(reference, other, atol=1e-5):
    assert len(other) == len(reference) == 20
    for ref, got in zip(reference, other):
        assert got["loss"] == pytest.approx(ref["loss"], abs=atol), f"step {ref['step']}"
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), f"step {ref['step']}"
        assert got["lr"] == ref["lr"] and got["consumed_tokens"] == ref["consumed_tokens"]


@pytest.mark.parametrize("tp,pp,dp", LAYOUTS, ids=[f"tp{t}-pp{p}-dp{d}" for t, p, d in LAYOUTS])
def test_layout_matches_single_process(single_process, pretrain_tiny, tp, pp, dp):
    base = single_process(*STEPS)
    assert base[-1]["loss"] < base[0]["loss"] - 0.5  # the comparison is over a run that learns
    assert_same_run(base, pretrain_tiny(tp, pp, dp, *STEPS)[0])


@pytest.mark.parametrize("stage", [0, 2, 3])  # ZeRO 1, tiny.yaml's own, is test_layout_matches_single_process[tp1-pp1-dp2]
def test_zero_stages_match(single_process, pretrain_tiny, stage):
    assert_same_run(single_process(*STEPS),
                    pretrain_tiny(1, 1, 2, *STEPS, f"parallel.zero_stage={stage}", name=f"zero{stage}")[0])


def test_post_ln_gpt1_style_matches(single_process, pretrain_tiny):
    post = ["model.norm_position=post"]
    base = single_process(*STEPS, *post)
    assert base[-1]["loss"] < base[0]["loss"] - 0.5
    assert_same_run(base, pretrain_tiny(2, 2, 1, *STEPS, *post, name="post-tp2-pp2")[0])
    assert base[0]["loss"] != single_process(*STEPS)[0]["loss"]  # the override really changed the model
