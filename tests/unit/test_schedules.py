import json
import math

import pytest

from megagpt.config import load_config
from megagpt.train.schedules import BatchRamp, CosineLR, batch_sizes


def test_warmup_is_linear_then_cosine_to_floor():
    lr = CosineLR(peak=6e-4, min_ratio=0.1, warmup_tokens=1000, decay_tokens=11000)
    assert lr(0) == 0.0
    assert lr(500) == pytest.approx(3e-4)
    assert lr(1000) == pytest.approx(6e-4)
    assert lr(6000) == pytest.approx(6e-5 + (6e-4 - 6e-5) * 0.5)  # half-way: cos(pi/2) = 0
    assert lr(11000) == pytest.approx(6e-5)
    assert lr(10**9) == pytest.approx(6e-5)  # GPT-3: training continues at 10%
    mid = 1000 + 10000 / 3
    assert lr(mid) == pytest.approx(6e-5 + 5.4e-4 * 0.5 * (1 + math.cos(math.pi / 3)))


def test_batch_ramp_grows_linearly_in_tokens():
    ramp = BatchRamp(full=64, start=16, increment=16, ramp_tokens=3000)  # 3 increments, 1000 tokens each
    assert [ramp.batch_size(t) for t in (0, 999, 1000, 1999, 2000, 2999, 3000, 10**6)] == [16, 16, 32, 32, 48, 48, 64, 64]
    assert BatchRamp(full=64).batch_size(0) == 64
    # GPT-3 175B's ramp (configs/parallel/gpt3-175b.yaml): 47 increments over 12B tokens. In floats the last one
    # came at 12,000,000,000 + a step (12e9 // (12e9 / 47) == 46.0): the full batch one step late
    ramp = BatchRamp(full=1536, start=32, increment=32, ramp_tokens=12_000_000_000)
    assert ramp.batch_size(12_000_000_000) == 1536 and ramp.batch_size(11_999_999_999) == 1504
    assert all(ramp.batch_size(-(-k * 12_000_000_000 // 47)) == 32 + 32 * k for k in range(48))


def test_run_batch_sizes_follow_consumed_tokens():
    cfg = load_config(None, ["model.seq_length=10", "train.steps=6", "train.global_batch_size=8",
                             "train.batch_ramp_start=4", "train.batch_ramp_increment=2", "train.batch_ramp_tokens=100"])
    # increments every 50 tokens: 40 tokens after step 1, 80 after step 2, 140 after step 3
    assert batch_sizes(cfg) == [4, 4, 6, 8, 8, 8]


def test_a_resume_that_moves_the_cosine_end_says_what_it_does_to_the_lr(tmp_path, capsys):
    """optim.decay_tokens unset: the cosine ends with the run, so raising train.steps to continue stretched it and
    the lr jumped at the resume (demo: 3.0e-4 at step 100 of 100, 1.76e-3 at step 100 of 200) without a word."""
    from megagpt.train.schedules import CosineLR, note_schedule

    short, longer = CosineLR(1e-3, 0.1, 100, 1000), CosineLR(1e-3, 0.1, 100, 2000)
    note_schedule(str(tmp_path), short, 0, 0)
    note_schedule(str(tmp_path), short, 5, 500)  # a resume at the same length: nothing to say
    assert capsys.readouterr().err == ""
    note_schedule(str(tmp_path), longer, 10, 1100)  # step 11 takes the lr of 1,100 tokens: its batch consumed
    err = capsys.readouterr().err
    assert err.startswith("megagpt: warning: the cosine now ends at 2,000 tokens, not 1,000 (optim.decay_tokens is "
                          "unset, so train.steps sets it): the lr at step 11 is ")
    assert f"{longer(1100):.3g} where the run was heading for {short(1100):.3g}" in err
    assert json.loads((tmp_path / "lr_schedule.json").read_text())["decay_tokens"] == 2000
