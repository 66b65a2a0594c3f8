"""`megagpt demo`'s choices, without running its stages (the GPU test and `make demo` run them)."""

import pytest

import launchers.cli
import launchers.demo as demo


@pytest.mark.parametrize("nproc,overrides,layout", [
    (8, [], (2, 2)), (4, [], (2, 2)), (2, [], (1, 1)), (1, [], (1, 1)), (6, ["train.global_batch_size=12", "train.eval_samples=12"], (1, 1)),
    (2, ["parallel.tp=2", "parallel.pp=1"], (2, 1)),  # what the user gives wins
])
def test_pretraining_runs_on_any_number_of_processes(monkeypatch, tmp_path, nproc, overrides, layout):
    """tiny.yaml's tp x pp = 2 x 2 refused --nproc 1, 2, 3, 5...: pretraining is data parallel there."""
    seen = []
    monkeypatch.setattr(demo, "build_corpus", lambda run_dir, vocab: str(tmp_path / "mixture.json"))
    monkeypatch.setattr(launchers.cli, "run_pretrain", lambda cfg, n, argv, stage="pretrain": seen.append(cfg) or 0)
    assert demo.run_demo(nproc, str(tmp_path / "demo"), overrides, pretrain_only=True) == 0
    [cfg] = seen
    assert (cfg.parallel.tp, cfg.parallel.pp) == layout and cfg.train.save_interval == cfg.train.steps


@pytest.mark.parametrize("nproc, ranks, split", [(16, 8, True), (8, 8, True), (4, 4, False), (1, 1, False)])
def test_alignment_runs_on_at_most_eight_processes(monkeypatch, tmp_path, nproc, ranks, split):
    """At --nproc 16 pretraining finished, then SFT was refused: its batch of 16 does not split over 16 replicas
    of micro-batch 2."""
    from megagpt.config import validate

    seen = []

    def stage(cfg, n, argv, stage="pretrain"):
        validate(cfg, n, check_data=False)
        seen.append((stage, n, cfg.rlhf.layout is not None))
        return 0

    monkeypatch.setattr(launchers.cli, "run_pretrain", stage)
    assert demo.align(str(tmp_path), str(tmp_path / "mixture.json"), nproc, []) == 0
    assert [s[:2] for s in seen] == [("sft", ranks), ("rm", ranks), ("ppo", ranks)] and seen[2][2] == split
