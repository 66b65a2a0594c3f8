"""`megagpt sft`: fine-tuning from a pretraining checkpoint learns the demonstrations, at any layout alike."""

import json
import os

import pytest

from tests.conftest import REPO, megagpt, read_jsonl

pytestmark = pytest.mark.slow
SFT = os.path.join(REPO, "configs", "rlhf", "sft-tiny.yaml")


@pytest.fixture(scope="module")
def pretrained(pretrained_tiny):
    """Step 30 of the session's 60-step pretraining (tests/conftest.py), so the run is made once per session."""
    return pretrained_tiny / "checkpoints" / "step_00000030"


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


@pytest.fixture(scope="module")
def single(pretrained, demonstrations, tmp_path_factory):
    """SFT in one process at the config's eval_interval (10): the run every test here looks at, made once."""
    return sft(pretrained, demonstrations, tmp_path_factory.mktemp("sft-single") / "run")


def test_sft_learns_the_responses_from_the_pretrained_weights(single):
    metrics, evals = single
    # the held-out loss, on responses only (measured: 7.13 at step 0, 4.57 at 10, 4.03 at 20)
    assert [e["step"] for e in evals] == [0, 10, 20]
    assert evals[1]["loss"] < evals[0]["loss"] - 2.0 and evals[2]["loss"] < evals[1]["loss"]
    assert metrics[0]["loss"] < 8.0  # started from trained weights, not ln(4096) = 8.3


@pytest.mark.parametrize("tp,pp,dp", [(2, 2, 2), (1, 1, 2)])
def test_sft_matches_at_other_layouts(pretrained, demonstrations, single, tmp_path, tp, pp, dp):
    base, _ = single  # the same config at 1 process (held-out evaluations included, as here)
    other, _ = sft(pretrained, demonstrations, tmp_path / "other", tp, pp, dp)
    for a, b in zip(base, other, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), a["step"]
