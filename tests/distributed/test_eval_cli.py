"""`megagpt eval` as users run it on a checkpoint: the same scores at TP=1 and TP=2, JSON output,
and bad task files stopped before any process starts."""

import json
import os

import pytest

from tests.conftest import TINY, megagpt

pytestmark = pytest.mark.slow

TASKS = os.path.join(os.path.dirname(TINY), "..", "eval")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, demo_prefix):
    run = tmp_path_factory.mktemp("eval") / "run"
    megagpt("pretrain", "--config", TINY, "--nproc", "2", "parallel.tp=2", "parallel.pp=1",
            f"data.prefixes=[{demo_prefix}]", f"run.dir={run}", "run.tensorboard=false", "train.progress=false",
            "train.steps=10", "train.eval_interval=0", "train.save_interval=10")
    return run


def evaluate(*args, nproc: int, out) -> dict:
    megagpt("eval", *args, "--nproc", str(nproc), "--output", str(out))
    return json.loads(out.read_text())


def test_perplexity_is_the_same_at_tp1_and_tp2(run_dir, demo_prefix, tmp_path):
    from megagpt.data.shards import write_shard
    from megagpt.data.tokenizer import Tokenizer

    texts = [f"def f{i}(x):\n    \"\"\"Return x times {i}.\"\"\"\n    return x * {i}\n" for i in range(30)]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    write_shard(str(tmp_path / "shard"), texts, Tokenizer.load(demo_prefix + ".tokenizer.json"))
    for data in (str(tmp_path / "shard"), str(docs)):
        one = evaluate("perplexity", "--checkpoint", str(run_dir), "--data", data, "--stride", "48", nproc=1,
                       out=tmp_path / "one.json")
        two = evaluate("perplexity", "--checkpoint", str(run_dir), "--data", data, "--stride", "48", nproc=2,
                       out=tmp_path / "two.json")
        assert one["tokens"] == two["tokens"] > 500 and one["stride"] == 48
        assert two["perplexity"] == pytest.approx(one["perplexity"], rel=1e-5)
        assert two["bits_per_byte"] == pytest.approx(one["bits_per_byte"], rel=1e-5)
        assert 1 < one["perplexity"] < 4096  # trained a little: better than uniform over the vocabulary


def test_few_shot_multiple_choice_is_the_same_at_tp1_and_tp2(run_dir, tmp_path):
    task = os.path.join(TASKS, "capitals.yaml")
    corpus = tmp_path / "corpus.txt"  # a crawl page quoting the first test record
    corpus.write_text("Quiz night! Q: What is the capital of Peru? A: Cusco Lima Arequipa. Answers next week.")
    one = evaluate("icl", "--checkpoint", str(run_dir), "--task", task, "--shots", "2", "--corpus", str(corpus),
                   nproc=1, out=tmp_path / "1.json")
    assert (one["contamination"]["dirty"]["records"], one["contamination"]["clean"]["records"]) == (1, 7)
    two = evaluate("icl", "--checkpoint", str(run_dir), "--task", task, "--shots", "2", nproc=2, out=tmp_path / "2.json")
    assert one["records"] == two["records"] == 8
    for a, b in zip(one["rows"], two["rows"]):
        assert b["logprobs"] == pytest.approx(a["logprobs"], abs=1e-4)
    assert (one["accuracy"], one["accuracy_per_token"]) == (two["accuracy"], two["accuracy_per_token"])


def test_a_bad_task_file_stops_before_any_process_with_its_file_and_line(run_dir, tmp_path):
    (tmp_path / "t.jsonl").write_text('{"target": "a"}\n{"target": ""}\n')
    (tmp_path / "t.yaml").write_text("type: completion\ntest: t.jsonl\nprompt: 'x'\n")
    done = megagpt("eval", "icl", "--checkpoint", str(run_dir), "--task", str(tmp_path / "t.yaml"), "--nproc", "2",
                   check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"megagpt: error: {tmp_path / 't.jsonl'}:2: a completion record needs a "
                                   f"non-empty string 'target'")


def test_lm_eval_harness_log_likelihoods_equal_megagpts_own(run_dir, tmp_path):
    """`megagpt eval harness` (lm-eval's CLI with the "megagpt" model) on a local task YAML over the same JSONL
    as a megagpt task: each choice's log-likelihood as lm-eval logs it equals `megagpt eval icl`'s."""
    test_file = os.path.abspath(os.path.join(TASKS, "capitals.test.jsonl"))
    prompt = "Q: What is the capital of {country}?\\nA:"
    jinja = prompt.replace("{country}", "{{country}}")
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "caps.yaml").write_text(
        "task: megagpt_capitals\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {test_file}\ntest_split: test\noutput_type: multiple_choice\n"
        f'doc_to_text: "{jinja}"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n')
    (tmp_path / "caps.yaml").write_text(f'type: multiple_choice\ntest: {test_file}\nprompt: "{prompt}"\n')
    ours = evaluate("icl", "--checkpoint", str(run_dir), "--task", str(tmp_path / "caps.yaml"), nproc=1,
                    out=tmp_path / "ours.json")
    megagpt("eval", "harness", "--model", "megagpt", "--model_args", f"checkpoint={run_dir}", "--device", "cpu",
            "--tasks", "megagpt_capitals", "--include_path", str(tmp_path / "harness"), "--output_path",
            str(tmp_path / "lm"), "--log_samples", env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    bad = megagpt("eval", "harness", "--model", "megagpt", "--model_args", f"checkpoint={tmp_path / 'none'}",
                  "--device", "cpu", "--tasks", "megagpt_capitals", "--include_path", str(tmp_path / "harness"),
                  env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}, check=False)
    assert (bad.returncode, bad.stderr.strip().splitlines()[-1]) == (  # was a 42-line traceback
        2, f"megagpt: error: checkpoint {tmp_path / 'none'}: no such directory"), bad.stderr
    samples = [json.loads(line) for path in (tmp_path / "lm").rglob("samples_megagpt_capitals_*.jsonl")
               for line in path.read_text().splitlines()]
    assert len(samples) == 8
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        theirs = [float(logp) for logp, _ in sample["filtered_resps"]]
        assert theirs == pytest.approx(ours["rows"][sample["doc_id"]]["logprobs"], abs=1e-4)
