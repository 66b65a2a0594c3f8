"""PPO's resume: a run that saved never silently starts over."""

from __future__ import annotations

import os

import pytest
import torch

from megagpt.config import load_config
from megagpt.errors import CheckpointError
from megagpt.rlhf.checkpoint import PPOCheckpointer
from tests.conftest import REPO

PPO_TINY = os.path.join(REPO, "configs", "rlhf", "tiny.yaml")


def test_latest_naming_a_missing_checkpoint_is_an_error_not_a_silent_fresh_start(world_of_one, tmp_path, capsys):
    """checkpoints/latest names step_00000004, whose directory is gone (or lost its megagpt.json, as a deletion
    cut short leaves it): the run saved, so a fresh start would train it over from nothing (it did, silently)."""
    cfg = load_config(PPO_TINY, [f"run.dir={tmp_path}"])
    root = tmp_path / "checkpoints"
    (root / "step_00000004" / "rng").mkdir(parents=True)
    (root / "latest").write_text("step_00000004\n")
    with pytest.raises(CheckpointError, match=f"no usable checkpoint in {root}; train.resume=false starts afresh"):
        PPOCheckpointer(cfg, {}, torch.device("cpu")).resume()
    assert f"{root}/latest names step_00000004, which is missing or incomplete" in capsys.readouterr().out
    assert PPOCheckpointer(load_config(PPO_TINY, [f"run.dir={tmp_path / 'new'}"]), {},
                           torch.device("cpu")).resume().iteration == 0  # no checkpoints at all: a fresh start
