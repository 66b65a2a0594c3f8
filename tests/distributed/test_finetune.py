"""`megagpt finetune` (GPT-1) from the session's pretrained tiny model (tests/conftest.py, read only): a
planted task learned with the auxiliary LM loss and without it, GPT-1's other three task forms at tensor
parallel 2, and bad records stopped before any process starts."""

import json
import os

import pytest
import yaml

from tests.conftest import REPO, TINY, megagpt

pytestmark = pytest.mark.slow

EVAL = os.path.join(REPO, "configs", "eval")
CONFIG = os.path.join(EVAL, "finetune-keyword.yaml")


def finetune(pretrained, run_dir, *overrides, nproc: int = 1) -> dict:
    megagpt("finetune", "--config", CONFIG, "--nproc", str(nproc), f"finetune.init={pretrained}",
            f"finetune.train={EVAL}/keyword.train.jsonl", f"finetune.test={EVAL}/keyword.test.jsonl",
            f"run.dir={run_dir}", "run.tensorboard=false", "train.progress=false", *overrides)
    with open(os.path.join(run_dir, "finetune.json")) as f:
        return json.load(f)


def read_losses(run_dir) -> list[float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def test_a_planted_task_is_learned_and_the_auxiliary_lm_loss_adds_to_it(pretrained_tiny, tmp_path):
    """Measured: accuracy 1.000 after 120 steps at lm_coef 0 (configs/eval/finetune-keyword.yaml; 0.958 and
    1.000 at seeds 7 and 11)."""
    learned = finetune(pretrained_tiny, tmp_path / "lm0")
    assert learned["accuracy"] >= 0.9 and learned["test_examples"] == 48 and learned["lm_coef"] == 0.0
    with_lm = finetune(pretrained_tiny, tmp_path / "lm0.5", "finetune.lm_coef=0.5", "train.steps=3",
                       "train.save_interval=3")
    assert with_lm["lm_coef"] == 0.5 and 0.0 <= with_lm["accuracy"] <= 1.0
    # the same first batch and weights: L3 - L2 is half the language-model loss on the task's text, which lies
    # between a trained model's and uniform over the vocabulary (ln 4099 = 8.32); measured 0.5 * 7.07
    assert 2.5 < read_losses(tmp_path / "lm0.5")[0] - read_losses(tmp_path / "lm0")[0] < 0.5 * 8.32


def test_a_stopped_finetune_run_resumes(pretrained_tiny, tmp_path):
    """The resume check compared the checkpoint (GPT-1's three tokens added) with the user's vocabulary and
    refused every resume: "is for another model shape: model.padded_vocab_size=...". run.dir/config.yaml held the
    vocabulary with the tokens added, so resuming from it was refused as another config (and a new run from it
    added three more)."""
    run = tmp_path / "resumed"
    finetune(pretrained_tiny, run, "train.steps=2", "train.save_interval=2")
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["model"]["vocab_size"] == yaml.safe_load(open(TINY))["model"]["vocab_size"]
    out = megagpt("finetune", "--config", str(run / "config.yaml"), "train.steps=3")
    assert "resumed from step 2" in out.stdout
    with open(run / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3]


def test_similarity_and_multiple_choice_run_at_tp2(pretrained_tiny, tmp_path):
    """GPT-1's two forms of several sequences per example (entailment is classification's one sequence)."""
    records = {
        "similarity": [{"text_a": "open the file", "text_b": "read the path", "label": i % 2} for i in range(8)],
        "multiple_choice": [{"context": "the value", "choices": ["returns", "file", "path"][: 2 + i % 2],
                             "label": i % 2} for i in range(8)],
    }
    for task, rows in records.items():
        data = tmp_path / f"{task}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        report = finetune(pretrained_tiny, tmp_path / task, f"finetune.task={task}", f"finetune.train={data}",
                          f"finetune.test={data}", "parallel.tp=2", "train.steps=2", nproc=2)
        assert report["task"] == task and report["test_examples"] == 8


def test_a_bad_record_stops_before_any_process(pretrained_tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a file", "label": 1}\n{"text": "no label"}\n')
    done = megagpt("finetune", "--config", CONFIG, "--nproc", "2", f"finetune.init={pretrained_tiny}",
                   f"finetune.train={bad}", f"finetune.test={bad}", f"run.dir={tmp_path / 'run'}", check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == (f'megagpt: error: {bad}: 1 malformed line (line 2: needs an integer "label", '
                                   f"got None)")
    long = tmp_path / "long.jsonl"  # every record longer than the context: the ranks started, then said
    long.write_text(json.dumps({"text": "open the file " * 200, "label": 0}) + "\n")  # "no fine-tuning examples"
    done = megagpt("finetune", "--config", CONFIG, "--nproc", "2", f"finetune.init={pretrained_tiny}",
                   f"finetune.train={long}", f"finetune.test={long}", f"run.dir={tmp_path / 'run'}", check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith(f"megagpt: error: {long}: none of its 1 records fits model.seq_length=")
