"""`megagpt plan` and `megagpt pretrain --dry-run` as a user runs them: the ranked table, JSON, the
verdict on a config's own layout, and one-line errors for requests that make no sense."""

import json
import os

import pytest

from launchers.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPT3_175B = os.path.join(REPO, "configs", "model", "gpt3-175b.yaml")
LAYOUT_175B = os.path.join(REPO, "configs", "parallel", "gpt3-175b.yaml")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    out, err = capsys.readouterr()
    return done.value.code, out, err


def test_plan_ranks_the_layouts_that_fit_and_explains_the_rest(capsys):
    code, out, _ = run(capsys, "plan", "--config", GPT3_175B, "--gpus", "1024", "--gpu-memory-gb", "80",
                       "train.precision=bf16", "--top", "3")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("174.60B parameters, 96 layers") and "on 1024 GPUs" in lines[0]
    first = lines[lines.index(next(x for x in lines if x.startswith("layout"))) + 1]
    # tp4 pp8 dp32 ranked first, and the trainer refused it: the batch ramp's 16 sequences are no whole number of
    # micro-batches over 32 replicas (configs/parallel/gpt3-175b.yaml ramps from 32 to run at that layout)
    assert first.split()[1:7] == ["tp8", "pp8", "dp16", "mb1", "zero1", "recompute=none"]
    misfits = lines[lines.index(next(x for x in lines if "do not fit" in x)) + 1:]
    assert len(misfits) == 3 and all("over by" in x and "GiB" in x for x in misfits)


def test_plan_json_lists_every_candidate_with_its_bytes_and_time(capsys):
    code, out, _ = run(capsys, "plan", "--config", GPT3_175B, "--gpus", "64", "--gpu-memory-gb", "80", "--json",
                       "train.precision=bf16")
    plans = json.loads(out)
    assert code == 0 and len(plans) > 10
    fits = [p["fits"] for p in plans]
    assert fits == sorted(fits, reverse=True)  # those that fit first
    fitting = [p for p in plans if p["fits"]]
    assert [p["step_seconds"] for p in fitting] == sorted(p["step_seconds"] for p in fitting)
    for p in plans:
        b = p["bytes"]
        assert b["total"] == b["weights"] + b["gradients"] + b["optimizer"] + b["activations"] + b["buffers"]
        assert (b["total"] <= b["usable"]) == p["fits"] and (p["why_not"] == "") == p["fits"]


@pytest.mark.parametrize("config, gpus, overrides", [(GPT3_175B, 1024, ["train.precision=bf16"]),
                                                     (LAYOUT_175B, 1024, []),
                                                     (os.path.join(REPO, "configs", "demo", "tiny.yaml"), 8,
                                                      ["train.eval_samples=24"])])
def test_every_layout_planned_is_one_the_trainer_takes(config, gpus, overrides):
    """The planner checked the global batch alone: 184 of the 242 layouts it fitted for gpt3-175b on 1024 GPUs,
    its first among them, were refused by `megagpt pretrain` (the batch ramp, the held-out samples)."""
    from megagpt.config import load_config, validate
    from megagpt.planner.search import plan, with_layout
    from megagpt.planner.timing import Hardware

    cfg = load_config(config, overrides)
    plans = plan(cfg, gpus, 80, Hardware())
    assert plans
    for p in plans:
        validate(with_layout(cfg, p.layout), gpus, check_data=False)


def test_deepspeeds_buffers_are_their_own_part_not_activations(capsys):
    """ZeRO 2's gradient bucket (5e8 elements, whatever the model) was counted as activations: the 466K-parameter
    demo at full recompute was told its activations took 1.9 GiB, which recompute or micro-batches cannot mend."""
    tiny = os.path.join(REPO, "configs", "demo", "tiny.yaml")
    code, out, _ = run(capsys, "plan", "--config", tiny, "--gpus", "1", "--gpu-memory-gb", "2.5", "--reserve-gb", "1",
                       "--all")
    assert code == 0
    misfit = next(x for x in out.splitlines() if "mb1 zero2 recompute=full" in x)
    assert misfit.endswith("over by 0.4 GiB; DeepSpeed's buffers take 1.9 GiB")
    code, out, _ = run(capsys, "plan", "--config", tiny, "--gpus", "1", "--gpu-memory-gb", "80", "--json")
    layouts = {(p["layout"]["zero_stage"], p["layout"]["micro_batch"], p["layout"]["recompute"]): p["bytes"]
               for p in json.loads(out)}
    zero1, zero2 = layouts[1, 1, "full"], layouts[2, 1, "full"]
    assert zero2["buffers"] == 500_000_000 * 4 and zero1["buffers"] == 0  # fp32: the bucket's 4 bytes an element
    assert zero2["activations"] < 2**21  # what the layers keep beside the bucket (the logits' transient is gone)


def test_a_cluster_too_small_for_the_model_fits_nothing_and_says_why(capsys):
    code, out, _ = run(capsys, "plan", "--config", GPT3_175B, "--gpus", "8", "--gpu-memory-gb", "80", "--all")
    assert code == 0
    assert "0 layouts fit" in out and "     none" in out
    assert out.count("over by") == len(out.split("do not fit:")[1].strip().splitlines())


@pytest.mark.parametrize("argv,message", [
    (["--gpus", "0", "--gpu-memory-gb", "80"], "--gpus 0: plan for at least one GPU"),
    (["--gpus", "8", "--gpu-memory-gb", "0.5"], "--gpu-memory-gb 0.5: a GPU with less than 1 GB cannot hold"),
    (["--gpus", "8", "--gpu-memory-gb", "inf"], "--gpu-memory-gb inf must be a finite number"),
    (["--gpus", "8", "--gpu-memory-gb", "80", "--gpu-tflops", "nan"], "--gpu-tflops nan must be a finite number"),
    (["--gpus", "8", "--gpu-memory-gb", "80", "model.num_heads=7"], "no layout of 8 GPUs suits this config: "
                                                                     "model.num_heads=7 must divide"),
    (["--gpus", "8", "--gpu-memory-gb", "80", "--gpu-tflops", "0"], "--gpu-tflops 0.0 must be positive"),
    # the candidates read the padded vocab before any layout was validated: a ZeroDivisionError traceback
    (["--gpus", "8", "--gpu-memory-gb", "80", "model.make_vocab_size_divisible_by=0"],
     "model.make_vocab_size_divisible_by=0 must be at least 1"),
    (["--gpus", "8", "--gpu-memory-gb", "80", "--matmul-efficiency", "1.5"], "--matmul-efficiency 1.5 must lie in"),
])
def test_nonsense_is_a_one_line_error(capsys, argv, message):
    code, out, err = run(capsys, "plan", "--config", GPT3_175B, *argv)
    assert code == 2 and out == ""
    assert err.startswith(f"megagpt: error: {message}") and err.count("\n") == 1


def test_dry_run_builds_gpt3_175b_stage_by_stage_without_weights(capsys):
    code, out, _ = run(capsys, "pretrain", "--config", LAYOUT_175B, "--dry-run", "--gpus", "1024")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("megagpt pretrain --dry-run: tp8 pp8 dp16 mb1 zero1 recompute=none sp on 1024 GPUs, bf16")
    stages = [x.split() for x in lines[2:-1]]
    assert [int(s[0]) for s in stages] == list(range(8)) and stages[0][1] == "0-11" and stages[-1][1] == "84-95"
    built = sum(float(s[2].rstrip("B")) for s in stages) * 8  # tp8: a rank holds an eighth of each matrix
    assert 174 < built < 180  # the tied embedding counted on both end stages
    assert lines[-1].startswith("verdict: fits: ")


def test_dry_run_of_a_layout_that_does_not_fit_names_the_excess_and_a_better_one(capsys):
    code, out, _ = run(capsys, "pretrain", "--config", LAYOUT_175B, "--dry-run", "--gpus", "128", "parallel.tp=8",
                       "parallel.pp=16", "train.batch_ramp_start=null", "train.micro_batch_size=12")
    assert code == 0
    verdict = out.splitlines()[-1]
    assert verdict.startswith("verdict: does not fit: needs ") and "over by" in verdict
    assert "activations take" in verdict and "the best layout that fits is" in verdict


def test_an_offloading_layout_says_its_step_time_leaves_the_offload_out(capsys):
    """The estimate was the same with offloading as without, and said nothing of it."""
    code, out, _ = run(capsys, "pretrain", "--config", os.path.join(REPO, "configs", "model", "gpt3-xl.yaml"),
                       "--dry-run", "--gpus", "8", "parallel.zero_stage=3", "parallel.offload_optimizer=true",
                       "parallel.offload_params=true", "train.batch_ramp_start=null")
    assert code == 0
    assert out.splitlines()[-1].endswith("(not counting the offload's host transfers and CPU optimizer step, which "
                                         "this estimate leaves out)")
