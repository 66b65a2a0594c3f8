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
