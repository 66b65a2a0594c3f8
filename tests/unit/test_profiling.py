"""StepProfiler's files for the steps a run actually takes: a resumed run, a run that stops inside the range."""

import json
from contextlib import closing

import torch

from megagpt.train.profiling import StepProfiler


def steps(profiler, first, last, raise_at=None):
    for step in range(first, last + 1):
        profiler.before(step)
        if step == raise_at:
            return
        torch.ones(8, 8) @ torch.ones(8, 8)
        profiler.after(step)


def written(run_dir):
    profile = run_dir / "profile"
    return sorted(p.name for p in profile.iterdir()) if profile.exists() else []


def test_a_resumed_run_profiles_from_its_first_step_inside_the_range(tmp_path):
    with closing(StepProfiler((2, 4), [0], 0, torch.device("cpu"), str(tmp_path))) as profiler:
        steps(profiler, 3, 5)  # resumed from step 2's checkpoint
    assert written(tmp_path) == ["rank0-steps3-4.json.gz", "rank0-steps3-4.ops.json", "rank0-steps3-4.txt"]
    ops = json.loads((tmp_path / "profile" / "rank0-steps3-4.ops.json").read_text())
    assert ops["steps"] == [3, 4] and {o["name"]: o["calls"] for o in ops["per_step"]}["aten::mm"] == 1


def test_a_run_stopped_inside_the_range_writes_the_steps_it_finished(tmp_path):
    with closing(StepProfiler((2, 6), [0], 0, torch.device("cpu"), str(tmp_path))) as profiler:
        steps(profiler, 1, 3)  # a signal: the loop saves after step 3 and returns
    assert written(tmp_path) == ["rank0-steps2-3.json.gz", "rank0-steps2-3.ops.json", "rank0-steps2-3.txt"]


def test_a_step_cut_short_leaves_no_profile_and_stops_the_profiler(tmp_path):
    with closing(StepProfiler((2, 6), [0], 0, torch.device("cpu"), str(tmp_path))) as profiler:
        steps(profiler, 1, 4, raise_at=4)
    assert written(tmp_path) == []
    assert profiler._prof is None and torch.autograd._profiler_enabled() is False


def test_other_ranks_and_steps_outside_the_range_profile_nothing(tmp_path):
    with closing(StepProfiler((2, 3), [1], 0, torch.device("cpu"), str(tmp_path))) as profiler:
        steps(profiler, 1, 4)
    with closing(StepProfiler((5, 6), [0], 0, torch.device("cpu"), str(tmp_path))) as profiler:
        steps(profiler, 1, 4)  # a run of 4 steps never reaches the range (validate refuses it; a rerun may not)
    assert written(tmp_path) == []
