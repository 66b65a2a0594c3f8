"""Every trainer path on CUDA + NCCL: fp32/bf16/fp16 training, held-out eval, save, resume, reshape-load,
export-hf/import-hf, compile, sparse attention and the demo, each run under the collective audit.

One GPU is enough (single-rank runs); with two or more, multi-rank layouts run too. `make gpu-check`
runs this file; without CUDA it is skipped.
"""

import json
import os

import pytest
import torch

from tests.conftest import TINY, megagpt, read_jsonl

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
STEPS = 6


def gpu_env(audit_dir) -> dict:
    return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES") or ",".join(map(str, range(GPUS))),
            "MEGAGPT_AUDIT_COLLECTIVES": str(audit_dir)}


def pretrain(prefix, run_dir, *overrides, nproc=1, tp=1, pp=1):
    """A tiny run on CUDA (run.device=cuda: no silent CPU fallback); returns its metrics."""
    megagpt("pretrain", "--config", TINY, "--nproc", str(nproc), f"parallel.tp={tp}", f"parallel.pp={pp}",
            f"data.prefixes=[{prefix}]", f"run.dir={run_dir}", "run.device=cuda", "run.tensorboard=false",
            "train.progress=false", f"train.steps={STEPS}", "train.eval_interval=3", "train.eval_samples=16",
            *overrides, env=gpu_env(f"{run_dir}-audit"))
    audits = [json.loads(open(os.path.join(f"{run_dir}-audit", f)).read()) for f in os.listdir(f"{run_dir}-audit")]
    assert len(audits) == nproc and all(a["calls"].get("all_reduce") for a in audits)
    return read_jsonl(os.path.join(run_dir, "metrics.jsonl"))


def continue_from(saved, target, step: int) -> None:
    """A new run dir whose latest checkpoint is `saved`'s step `step`."""
    tag = f"step_{step:08d}"
    os.makedirs(target / "checkpoints")
    os.symlink(saved / "checkpoints" / tag, target / "checkpoints" / tag)
    (target / "checkpoints" / "latest").write_text(tag + "\n")


def assert_close_runs(a, b, atol):
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], abs=atol), f"step {x['step']}"


# bf16 and fp16 round activations and weights: their runs agree to ~1e-2, fp32 to 1e-4 (GPU kernels
# are not bitwise deterministic across processes, e.g. flash attention's backward).
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-2}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_train_eval_save_resume_and_reshape_on_cuda(demo_prefix, tmp_path, precision):
    p = f"train.precision={precision}"
    saved = pretrain(demo_prefix, tmp_path / "saved", p, "train.save_interval=3", "train.keep_last=0")
    assert len(saved) == STEPS and all(m["loss"] == m["loss"] for m in saved)
    assert saved[-1]["loss"] < saved[0]["loss"]
    assert saved[-1]["peak_gpu_memory_gb"] > 0
    if precision == "fp16":  # DeepSpeed's dynamic scale starts at 2^16; an overflow skips the step, and lowers it
        assert all(m["loss_scale"] in [2.0**e for e in range(17)] and isinstance(m["skipped"], bool) for m in saved)
        assert all(b["skipped"] for a, b in zip(saved, saved[1:]) if b["loss_scale"] < a["loss_scale"])
    else:
        assert not any("loss_scale" in m for m in saved)
    assert [e["step"] for e in read_jsonl(str(tmp_path / "saved" / "eval.jsonl"))] == [0, 3, 6]
    continue_from(tmp_path / "saved", tmp_path / "resumed", 3)
    resumed = pretrain(demo_prefix, tmp_path / "resumed", p)
    assert_close_runs(saved[3:], resumed, TOLERANCE[precision])
    # another layout (ZeRO-2 instead of 1) loads through the layout-free shards
    continue_from(tmp_path / "saved", tmp_path / "reshaped", 3)
    reshaped = pretrain(demo_prefix, tmp_path / "reshaped", p, "parallel.zero_stage=2")
    assert_close_runs(saved[3:], reshaped, TOLERANCE[precision])
    if precision == "fp16":  # the dynamic loss scale continues too: a reshaped run restarting at 2^16 would skip steps
        assert [m["loss_scale"] for m in resumed] == [m["loss_scale"] for m in saved[3:]]
        assert [m["loss_scale"] for m in reshaped] == [m["loss_scale"] for m in saved[3:]]
    else:
        assert not any("loss_scale" in m for m in resumed + reshaped)


def test_dropout_on_cuda_resumes_exactly_and_on_cpu_with_fresh_streams(demo_prefix, tmp_path):
    """GPT-2's dropout on CUDA: the TP stream forked from a CUDA generator, replayed by selective recompute; the
    streams saved on CUDA resume the run exactly, and a resume on CPU starts fresh ones and says so (it raised)."""
    drop = ["model.hidden_dropout=0.1", "model.attention_dropout=0.1", "train.activation_checkpointing=selective"]
    saved = pretrain(demo_prefix, tmp_path / "saved", *drop, "train.save_interval=3", "train.keep_last=0")
    assert saved[-1]["loss"] < saved[0]["loss"]
    continue_from(tmp_path / "saved", tmp_path / "resumed", 3)
    assert_close_runs(saved[3:], pretrain(demo_prefix, tmp_path / "resumed", *drop), TOLERANCE["fp32"])
    continue_from(tmp_path / "saved", tmp_path / "on-cpu", 3)
    proc = megagpt("pretrain", "--config", TINY, "--nproc", "1", "parallel.tp=1", "parallel.pp=1",
                   f"data.prefixes=[{demo_prefix}]", f"run.dir={tmp_path / 'on-cpu'}", "run.device=cpu",
                   "run.tensorboard=false", "train.progress=false", f"train.steps={STEPS}", *drop)
    assert "was saved on cuda, this run is on cpu: dropout's random streams start afresh" in proc.stdout
    assert [m["step"] for m in read_jsonl(str(tmp_path / "on-cpu" / "metrics.jsonl"))] == [4, 5, 6]


@pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_multi_gpu_layouts_match_one_gpu(demo_prefix, tmp_path, tp, pp):
    single = pretrain(demo_prefix, tmp_path / "single")
    assert_close_runs(single, pretrain(demo_prefix, tmp_path / "multi", nproc=tp * pp, tp=tp, pp=pp), 1e-4)


def test_compile_matches_eager_on_cuda(demo_prefix, tmp_path):
    eager = pretrain(demo_prefix, tmp_path / "eager", "train.precision=bf16")
    compiled = pretrain(demo_prefix, tmp_path / "compiled", "train.precision=bf16", "train.compile=true")
    assert_close_runs(eager, compiled, 2e-2)


def test_profiled_steps_time_the_gpu_kernels(demo_prefix, tmp_path):
    pretrain(demo_prefix, tmp_path / "run", "train.precision=bf16", "train.profile_steps=[4,5]")
    ops = json.loads(open(tmp_path / "run" / "profile" / "rank0-steps4-5.ops.json").read())
    kernels = [o for o in ops["per_step"] if o["kernel"]]
    assert ops["device"] == "cuda" and kernels and sum(o["self_device_ms"] for o in kernels) > 0


def test_a_diverged_cuda_run_stops_at_the_step(demo_prefix, tmp_path):
    """bf16 ZeRO 1 without DeepSpeed's overflow scan: the NaN that lr 1e30 makes stops the run, not a skipped step."""
    proc = megagpt("pretrain", "--config", TINY, "--nproc", "1", "parallel.tp=1", "parallel.pp=1",
                   f"data.prefixes=[{demo_prefix}]", f"run.dir={tmp_path / 'run'}", "run.device=cuda",
                   "run.tensorboard=false", "train.progress=false", "train.steps=4", "train.precision=bf16",
                   "optim.lr=1e30", "optim.warmup_tokens=0", check=False, env=gpu_env(tmp_path / "audit"))
    error = [line for line in proc.stderr.splitlines() if line.startswith("megagpt: error: ")]
    assert proc.returncode == 2 and len(error) == 1, proc.stderr[-2000:]
    assert error[0].startswith("megagpt: error: step 2: loss ") and "the run diverged" in error[0]


@pytest.mark.parametrize("pattern", ["local", "strided"])
def test_sparse_attention_trains_on_cuda(demo_prefix, tmp_path, pattern):
    sparse = ["model.attention=alternating", f"model.sparse_pattern={pattern}", "model.local_window=16"]
    fp32 = pretrain(demo_prefix, tmp_path / "fp32", *sparse)
    bf16 = pretrain(demo_prefix, tmp_path / "bf16", *sparse, "train.precision=bf16", "train.compile=true")
    assert fp32[-1]["loss"] < fp32[0]["loss"]
    assert_close_runs(fp32, bf16, 5e-2)


def test_export_and_import_hf_from_a_cuda_run(demo_prefix, tmp_path):
    run = tmp_path / "run"
    trained = pretrain(demo_prefix, run, "train.save_interval=6", "train.precision=bf16")
    megagpt("export-hf", "--checkpoint", str(run), "--out", str(tmp_path / "hf"))
    megagpt("import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "imported"))
    again = pretrain(demo_prefix, tmp_path / "imported", "train.precision=bf16")
    assert again[0]["loss"] < trained[0]["loss"] - 0.1  # the same first batch: trained weights, not fresh ones


def test_demo_on_cuda(tmp_path):
    for module in ("fastwarc", "resiliparse", "fasttext", "datasketch"):  # the demo builds its corpus first
        pytest.importorskip(module, reason="the demo's corpus stage needs the corpus packages (make install)")
    proc = megagpt("demo", "--nproc", "1", "--run-dir", str(tmp_path / "demo"), "parallel.tp=1", "parallel.pp=1",
                   "run.device=cuda", "train.steps=20", "train.eval_interval=10", "train.progress=false",
                   env=gpu_env(tmp_path / "demo-audit"))
    assert "megagpt: trained 20 steps" in proc.stdout


def test_instruct_stage_on_cuda(demo_prefix, tmp_path):
    """SFT, reward model and PPO-ptx (all four roles on the one GPU) under NCCL and the collective audit."""
    from megagpt.rlhf.demo_data import write_instruct_data

    rlhf = os.path.join(os.path.dirname(TINY), "..", "rlhf")
    files = write_instruct_data(str(tmp_path / "data"), comparisons=40)
    pretrain(demo_prefix, tmp_path / "pre", "train.save_interval=6")
    common = ["--nproc", "1", "parallel.tp=1", "parallel.pp=1", "run.device=cuda", "run.tensorboard=false",
              "train.progress=false"]
    megagpt("sft", "--config", os.path.join(rlhf, "sft-tiny.yaml"), *common, f"sft.data={files['demonstrations']}",
            f"sft.init={tmp_path / 'pre'}", f"run.dir={tmp_path / 'sft'}", "train.steps=4", "train.save_interval=4",
            env=gpu_env(tmp_path / "sft-audit"))
    megagpt("rm", "--config", os.path.join(rlhf, "rm-tiny.yaml"), *common, f"rm.data={files['comparisons']}",
            f"rm.demonstrations={files['demonstrations']}", f"rm.init={tmp_path / 'sft'}", f"run.dir={tmp_path / 'rm'}",
            "train.steps=4", "train.save_interval=4", "train.eval_interval=2", env=gpu_env(tmp_path / "rm-audit"))
    for precision in ("fp32", "bf16"):
        run = tmp_path / f"ppo-{precision}"
        megagpt("ppo", "--config", os.path.join(rlhf, "tiny.yaml"), *common, "rlhf.layout=null",
                f"rlhf.prompts={files['prompts']}", f"rlhf.actor_init={tmp_path / 'sft'}",
                f"rlhf.reward_init={tmp_path / 'rm'}", f"data.prefixes=[{demo_prefix}]", f"run.dir={run}",
                f"train.precision={precision}", "train.steps=3", "train.save_interval=2",
                env=gpu_env(tmp_path / f"ppo-{precision}-audit"))
        records = read_jsonl(str(run / "metrics.jsonl"))
        assert [r["step"] for r in records] == [1, 2, 3]
        assert records[0]["kl"] == 0.0 or precision != "fp32"  # actor = reference at the first rollout
        assert all(r["ptx_loss"] > 0 for r in records)
