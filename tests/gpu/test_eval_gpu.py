"""`megagpt eval` on CUDA: the same perplexity and few-shot log-likelihoods as on CPU for one checkpoint,
under the collective audit. `make gpu-check` runs this; without CUDA it is skipped."""

import json
import os

import pytest
import torch

from tests.conftest import TINY, megagpt

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TASK = os.path.join(os.path.dirname(TINY), "..", "eval", "capitals.yaml")


def test_eval_on_cuda_equals_cpu(demo_prefix, tmp_path):
    run = tmp_path / "run"
    megagpt("pretrain", "--config", TINY, "parallel.tp=1", "parallel.pp=1", f"data.prefixes=[{demo_prefix}]",
            f"run.dir={run}", "run.tensorboard=false", "train.progress=false", "train.steps=6",
            "train.eval_interval=0", "train.save_interval=6")
    gpu = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES") or "0",
           "MEGAGPT_AUDIT_COLLECTIVES": str(tmp_path / "audit")}
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i}\n"}) + "\n" for i in range(40)))
    results = {}
    for device, env in (("cpu", None), ("cuda", gpu)):
        for kind, args in (("perplexity", ["--data", str(docs), "--stride", "32"]), ("icl", ["--task", TASK, "--shots", "2"])):
            out = tmp_path / f"{kind}-{device}.json"
            megagpt("eval", kind, "--checkpoint", str(run), "--device", device, "--output", str(out), *args, env=env)
            results[kind, device] = json.loads(out.read_text())
    assert results["perplexity", "cuda"]["perplexity"] == pytest.approx(results["perplexity", "cpu"]["perplexity"],
                                                                         rel=1e-4)
    for a, b in zip(results["icl", "cpu"]["rows"], results["icl", "cuda"]["rows"]):
        assert b["logprobs"] == pytest.approx(a["logprobs"], abs=1e-3)
