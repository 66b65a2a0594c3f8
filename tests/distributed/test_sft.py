"""`megagpt sft`: fine-tuning from a pretraining checkpoint learns the demonstrations, at any layout alike."""

import json
import os

import pytest

from tests.conftest import REPO, TINY, megagpt, read_jsonl

pytestmark = pytest.mark.slow
SFT = os.path.join(REPO, "configs", "rlhf", "sft-tiny.yaml")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, demo_prefix):
    run = tmp_path_factory.mktemp("pretrained") / "run"
    megagpt("pretrain", "--config", TINY, "--nproc", "1", "parallel.tp=1", "parallel.pp=1",
            f"data.prefixes=[{demo_prefix}]", f"run.dir={run}", "run.tensorboard=false", "train.progress=false",
            "train.steps=30", "train.eval_interval=0", "train.save_interval=30")
    return run


@pytest.fixture(scope="module")
def demonstrations(tmp_path_factory):
    """A planted task: the response always names the prompt's subject the same way."""
    from megagpt.data.demo_corpus import stdlib_docstrings

    path = tmp_path_factory.mktemp("demos") / "demos.jsonl"
    docs = [d.split(".")[0][:120] for d in stdlib_docstrings()][:80]
    path.write_text("".join(json.dumps({"prompt": f"Summarize: {d}\nSummary:", "response": " It is documented."}) + "\n"
                            for d in docs))
    return path


def sft(pretrained, demonstrations, run_dir, tp=1, pp=1, dp=1, *overrides):
    megagpt("sft", "--config", SFT, "--nproc", str(tp * pp * dp), f"parallel.tp={tp}", f"parallel.pp={pp}",
            f"sft.data={demonstrations}", f"sft.init={pretrained}", f"run.dir={run_dir}", "run.tensorboard=false",
            "train.progress=false", "train.steps=20", *overrides)
    return read_jsonl(str(run_dir / "metrics.jsonl")), read_jsonl(str(run_dir / "eval.jsonl"))


def test_sft_learns_the_responses_from_the_pretrained_weights(pretrained, demonstrations, tmp_path):
    metrics, evals = sft(pretrained, demonstrations, tmp_path / "sft")
    # the held-out loss, on responses only (measured: 7.26 at step 0, 4.63 at 10, 4.00 at 20)
    assert [e["step"] for e in evals] == [0, 10, 20]
    assert evals[1]["loss"] < evals[0]["loss"] - 2.0 and evals[2]["loss"] < evals[1]["loss"]
    assert metrics[0]["loss"] < 8.0  # started from trained weights, not ln(4096) = 8.3


@pytest.mark.parametrize("tp,pp,dp", [(2, 2, 2), (1, 1, 2)])
def test_sft_matches_at_other_layouts(pretrained, demonstrations, tmp_path, tp, pp, dp):
    base, _ = sft(pretrained, demonstrations, tmp_path / "base", 1, 1, 1, "train.eval_interval=0")
    other, _ = sft(pretrained, demonstrations, tmp_path / "other", tp, pp, dp, "train.eval_interval=0")
    for a, b in zip(base, other, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), a["step"]
