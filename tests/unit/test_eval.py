"""Evaluation scores against direct computations on a tiny random model: token log-likelihoods,
sliding-window perplexity, zero/few-shot prompts and their scores, and task files that fail with
their file and line."""

import dataclasses
import json
import math
import os
import re

import pytest
import torch

from megagpt.errors import ConfigError, DataError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = os.path.join(REPO, "configs", "eval")


@pytest.fixture(scope="module")
def tok(demo_prefix):
    from megagpt.data.tokenizer import Tokenizer

    return Tokenizer.load(demo_prefix + ".tokenizer.json")


@pytest.fixture(scope="module")
def scorer(world_of_one, tok):
    from megagpt.config import ModelConfig
    from megagpt.eval.scorer import Scorer
    from megagpt.model.gpt import GPT
    from megagpt.model.layers import LayerContext

    m = ModelConfig(num_layers=2, hidden_size=32, num_heads=2, seq_length=64, vocab_size=tok.vocab_size,
                    init_std=0.2)  # a wide init: the random model prefers some tokens clearly
    model = GPT(LayerContext(model=m, seed=7, tp_group=world_of_one))
    return Scorer(model, bos=tok.eod, batch_size=3)


def direct_logprobs(scorer, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1 by a plain forward and log_softmax over the real vocabulary."""
    with torch.no_grad():
        logits = scorer.model(torch.tensor([ids]))[0, :-1, :scorer.ctx.model.vocab_size].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_scores_equal_a_plain_forward_whatever_the_batch(scorer):
    seqs = [[5, 9, 200, 31], [7, 7], list(range(100, 164)), [3, 1000, 2000, 17, 5]]
    for ids, got in zip(seqs, scorer.score(seqs)):
        want = direct_logprobs(scorer, ids)
        assert got.logprobs == pytest.approx(want.tolist(), abs=1e-5)
        with torch.no_grad():
            argmax = scorer.model(torch.tensor([ids]))[0, :-1, :scorer.ctx.model.vocab_size].argmax(-1)
        assert got.greedy == (argmax == torch.tensor(ids[1:])).tolist()


def test_windows_score_every_token_once_with_at_least_context_minus_stride_before_it():
    from megagpt.eval.perplexity import windows

    for n, context, stride in [(10, 4, 4), (10, 4, 1), (200, 64, 32), (65, 64, 64), (2, 64, 32)]:
        seen = []
        for begin, end, new in windows(n, context, stride):
            assert end - begin <= context and new <= end - begin - 1
            scored = list(range(end - new, end))
            assert all(t - begin >= min(context - stride, t) for t in scored)
            seen += scored
        assert seen == list(range(1, n))
    with pytest.raises(ConfigError, match="--stride 65 must lie in"):
        windows(10, 64, 65)


@pytest.mark.parametrize("stride", [64, 16])
def test_perplexity_equals_the_mean_nll_of_its_windows(scorer, tok, stride):
    from megagpt.eval.perplexity import perplexity, windows

    stream = [tok.eod] + tok.encode("def f(x):\n    return x + 1\n" * 12) + [tok.eod]
    result = perplexity(scorer, tok, stream, stride)
    nll = -sum(direct_logprobs(scorer, stream[b:e])[-new:].sum().item() for b, e, new in windows(len(stream), 64, stride))
    assert result["tokens"] == len(stream) - 1
    assert result["nll"] == pytest.approx(nll / result["tokens"], rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll / result["tokens"]), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(tok.decode(stream[1:]).encode()), rel=1e-5)


def test_multiple_choice_scores_equal_direct_log_likelihoods(scorer, tok):
    from megagpt.eval.icl import build_prompt, evaluate, shots_for
    from megagpt.eval.tasks import load_task

    task = load_task(os.path.join(TASKS, "capitals.yaml"))
    task.description = ""  # short prompts: every shot fits the 64-token context
    result = evaluate(scorer, tok, task, shots=1, seed=3)
    assert result["mean_shots_used"] == 1.0
    right = right_per_token = 0
    for index, (record, row) in enumerate(zip(task.test, result["rows"])):
        prompt = tok.encode(build_prompt(task, shots_for(task, index, record, 1, 3), record))
        totals, per_token = [], []
        for choice in record["choices"]:
            answer = tok.encode(" " + choice)
            totals.append(direct_logprobs(scorer, prompt + answer)[-len(answer):].sum().item())
            per_token.append(totals[-1] / len(answer))
        assert row["logprobs"] == pytest.approx(totals, abs=1e-4)
        right += max(range(3), key=totals.__getitem__) == record["label"]
        right_per_token += max(range(3), key=per_token.__getitem__) == record["label"]
    assert result["accuracy"] == right / 8 and result["accuracy_per_token"] == right_per_token / 8
    assert result["prompts_cut"] == result["answers_cut"] == 0
    # a choice written twice (MMLU has a few): equal scores, the first copy taken; either copy of the right one is
    # right, whichever the label names (the label alone decided it)
    record = {**task.test[0], "choices": [task.test[0]["choices"][task.test[0]["label"]]] * 2}
    twice = dataclasses.replace(task, test=[{**record, "label": 0}, {**record, "label": 1}])
    rows = evaluate(scorer, tok, twice, shots=0)["rows"]
    assert rows[0]["logprobs"][0] == rows[0]["logprobs"][1] and rows[0]["correct"] and rows[1]["correct"]


def test_records_cut_to_fit_the_context_are_counted(scorer, tok, tmp_path):
    """A choice longer than the context was scored on its last tokens alone, and a prompt that did not fit lost its
    start, both without a word."""
    from megagpt.eval.icl import evaluate
    from megagpt.eval.tasks import load_task

    records = [{"q": "x", "choices": ["a", "b " * 100], "label": 0},  # an answer longer than the 64-token context
               {"q": "x " * 100, "choices": ["a", "b"], "label": 0},  # a prompt that does not fit alone
               {"q": "x", "choices": ["a", "b"], "label": 0}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "t.yaml").write_text("type: multiple_choice\ntest: t.jsonl\nprompt: '{q}'\n")
    result = evaluate(scorer, tok, load_task(str(tmp_path / "t.yaml")))
    assert (result["prompts_cut"], result["answers_cut"]) == (2, 1)  # the long answer leaves its prompt no room


def test_per_token_normalisation_prefers_the_likelier_tokens_not_the_shorter_answer(scorer, tok, tmp_path):
    """Two choices: one token of log-probability a, or that token then more (each below 0): the total always
    favours the short one, the per-token mean the long one once its extra tokens are likelier than a."""
    from megagpt.eval.icl import evaluate
    from megagpt.eval.tasks import load_task

    prompt = tok.encode("x")
    scored = scorer.score([prompt + list(range(40, 60))])[0].logprobs  # a random model's preferences
    likely = max(range(40, 60), key=lambda t: scored[t - 40])
    short, long_ = tok.decode([likely]), tok.decode([likely]) * 6
    (tmp_path / "t.jsonl").write_text(json.dumps({"q": "x", "choices": [short, long_], "label": 1}) + "\n")
    (tmp_path / "t.yaml").write_text("type: multiple_choice\ntest: t.jsonl\nprompt: '{q}'\nanswer_prefix: ''\n")
    row = evaluate(scorer, tok, load_task(str(tmp_path / "t.yaml")))["rows"][0]
    n_short, n_long = len(tok.encode(short)), len(tok.encode(long_))
    assert row["correct"] == (row["logprobs"][1] > row["logprobs"][0])
    assert row["correct_per_token"] == (row["logprobs"][1] / n_long > row["logprobs"][0] / n_short)


def test_completion_is_right_when_every_target_token_is_greedy(scorer, tok):
    from megagpt.eval.icl import build_prompt, evaluate
    from megagpt.eval.tasks import load_task

    task = load_task(os.path.join(TASKS, "last-word.yaml"))
    result = evaluate(scorer, tok, task, shots=0)
    for record, row in zip(task.test, result["rows"]):
        prompt, target = tok.encode(build_prompt(task, [], record)), tok.encode(" " + record["target"])
        ids = prompt + target
        with torch.no_grad():
            argmax = scorer.model(torch.tensor([ids]))[0, :-1, :tok.vocab_size].argmax(-1)[-len(target):]
        assert row["correct"] == (argmax.tolist() == target)
        assert row["logprob_per_token"] == pytest.approx(
            direct_logprobs(scorer, ids)[-len(target):].mean().item(), abs=1e-5)


def test_generation_scores_the_greedy_answer_to_the_stop_string(scorer, tok):
    from megagpt.eval.icl import evaluate, exact_match, f1
    from megagpt.eval.tasks import load_task

    result = evaluate(scorer, tok, load_task(os.path.join(TASKS, "arithmetic.yaml")), shots=2, limit=3)
    assert result["records"] == 3 and all("\n" not in r["prediction"] for r in result["rows"])
    assert exact_match("The  Seven.", "seven") == 1.0 and exact_match("7 apples", "7") == 0.0
    assert f1("seven apples", "seven") == pytest.approx(2 / 3) and f1("", "seven") == 0.0


def test_shots_are_seeded_per_record_exclude_it_and_drop_to_fit(tok):
    from megagpt.eval.icl import fitted_prompt, shots_for
    from megagpt.eval.tasks import load_task

    task = load_task(os.path.join(TASKS, "capitals.yaml"))
    a = shots_for(task, 0, task.test[0], 3, seed=1)
    assert a == shots_for(task, 0, task.test[0], 3, seed=1) and a != shots_for(task, 1, task.test[0], 3, seed=1)
    task.test.append(task.train[0])
    assert task.train[0] not in shots_for(task, 8, task.train[0], 7, seed=1)
    again = dict(task.train[0])  # the same record read again (train and test name one file): never its own shot
    assert again not in shots_for(task, 8, again, 7, seed=1)
    with pytest.raises(ConfigError, match="--shots 8: the task's train split has 7 records"):
        shots_for(task, 8, again, 8, seed=1)
    ids, used = fitted_prompt(task, tok, task.train[1:6], task.test[0], context=64, room=4)
    assert len(ids) + 4 <= 64 and used < 5
    with pytest.raises(ConfigError, match="--shots 9: the task's train split has 8"):
        shots_for(task, 0, task.test[0], 9, seed=1)


@pytest.mark.parametrize("line,message", [
    ('{"country": "X", "choices": ["a", "b"], "label": 2}', "t.jsonl:2: 'label' must be the index of the right choice"),
    ('{"choices": ["a", "b"], "label": 0}', "t.jsonl:2: the prompt's field(s) country are missing"),
    ('{"country": "X", "choices": ["a"], "label": 0}', "t.jsonl:2: a multiple_choice record needs 'choices'"),
    ('not json', "t.jsonl:2: not JSON"),
    ('["country"]', "t.jsonl:2: a record must be a JSON object"),
    ('{"country": "\\ud800", "choices": ["a", "b"], "label": 0}', "t.jsonl:2: holds '\\ud800', a lone UTF-16 surrogate"),
])
def test_bad_records_fail_with_their_file_and_line(tmp_path, line, message):
    from megagpt.eval.tasks import load_task

    good = json.dumps({"country": "Y", "choices": ["a", "b"], "label": 1})
    (tmp_path / "t.jsonl").write_text(good + "\n" + line + "\n")
    (tmp_path / "t.yaml").write_text("type: multiple_choice\ntest: t.jsonl\nprompt: 'Capital of {country}?'\n")
    with pytest.raises(DataError) as err:
        load_task(str(tmp_path / "t.yaml"))
    assert str(err.value).startswith(str(tmp_path / message.split(":")[0])) and message.split(":", 1)[1] in str(err.value)


def test_bytes_that_are_not_utf8_are_placed_by_line_and_byte_of_the_file(tmp_path):
    from megagpt.eval.tasks import load_task

    good = b"".join(json.dumps({"target": f"t{i}"}).encode() + b"\n" for i in range(5000))
    (tmp_path / "t.jsonl").write_bytes(good + b'{"target": "\xff"}\n')
    (tmp_path / "t.yaml").write_text("type: completion\ntest: t.jsonl\nprompt: x\n")
    with pytest.raises(DataError, match=rf"t.jsonl:5001: not UTF-8 text \(byte {len(good) + 12}: invalid start"):
        load_task(str(tmp_path / "t.yaml"))  # was "byte 8", the offset in a decode chunk


@pytest.mark.parametrize("prompt, line, message", [
    ("'Capital of {country:d}?'", '{"country": "Peru"}', "Unknown format code 'd'"),  # a traceback in a rank
    ("'Capital of {country.name}?'", '{"country": "Peru"}', "AttributeError"),
    ("'Capital of {country.name}?'", '{"choices": ["a", "b"]}', "the prompt's field(s) country are missing"),
])
def test_a_prompt_the_records_cannot_fill_fails_with_file_and_line(tmp_path, prompt, line, message):
    from megagpt.eval.tasks import load_task

    (tmp_path / "t.jsonl").write_text(line.replace("}", ', "target": "Lima"}') + "\n")
    (tmp_path / "t.yaml").write_text(f"type: completion\ntest: t.jsonl\nprompt: {prompt}\n")
    with pytest.raises(DataError) as err:
        load_task(str(tmp_path / "t.yaml"))
    assert str(err.value).startswith(f"{tmp_path / 't.jsonl'}:1: ") and message in str(err.value)


@pytest.mark.parametrize("yaml_text,message", [
    ("type: essay\ntest: t.jsonl\nprompt: x\n", "type 'essay' must be one of"),
    ("type: completion\nprompt: x\n", "'test' is missing"),
    ("type: completion\ntest: t.jsonl\nprompt: x\nshots: 3\n", "unknown setting(s) shots"),
    ("type: completion\ntest: t.jsonl\nprompt: 12\n", "prompt=12 must be text"),
    ("type: completion\ntest: t.jsonl\nprompt: x\nseparator: 7\n", "separator=7 must be text"),
    ("type: generation\ntest: t.jsonl\nprompt: x\nmax_new_tokens: ten\n", "max_new_tokens='ten' must be a whole"),
    ("type: generation\ntest: t.jsonl\nprompt: x\nmax_new_tokens: -3\n", "max_new_tokens=-3 must be a whole number >= 1"),
    ("type: completion\ntest: t.jsonl\nprompt:\n", "'prompt' is missing"),
    ("type: completion\ntest: nope.jsonl\nprompt: x\n", "data file"),
    ("type: completion\ntest: t.jsonl\nprompt: '{}'\n", "prompt fields must be named"),
])
def test_bad_task_settings_are_one_line_errors(tmp_path, yaml_text, message):
    from megagpt.eval.tasks import load_task

    (tmp_path / "t.jsonl").write_text('{"target": "a"}\n')
    (tmp_path / "t.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_task(str(tmp_path / "t.yaml"))


def test_a_generation_prompt_that_comes_out_empty_starts_a_document(scorer, tok, tmp_path):
    """An empty prompt made an empty float tensor, and the rank's embedding lookup a RuntimeError traceback."""
    from megagpt.eval.icl import evaluate
    from megagpt.eval.tasks import load_task
    from megagpt.generation import Sampling, generate

    (tmp_path / "t.jsonl").write_text('{"q": "", "answers": ["x"]}\n')
    (tmp_path / "t.yaml").write_text('type: generation\ntest: t.jsonl\nprompt: "{q}"\nanswer_prefix: ""\n'
                                     'max_new_tokens: 4\nstop: ""\n')
    row = evaluate(scorer, tok, load_task(str(tmp_path / "t.yaml")), shots=0)["rows"][0]
    new = generate(scorer.model, torch.tensor([[tok.eod]]), Sampling(4, temperature=0.0), eod=tok.eod,
                   vocab=tok.vocab_size)[0, 1:].tolist()
    assert row["prediction"] == tok.decode(new[: new.index(tok.eod)] if tok.eod in new else new).strip()


@pytest.mark.parametrize("args,message", [({"rolling_strid": 1}, "unknown argument(s) rolling_strid"),
                                          ({"rolling_stride": 0}, "rolling_stride=0 must be a whole number >= 1")])
def test_lm_eval_model_args_that_would_be_ignored_are_refused(args, message):
    """A misspelt --model_args key, or rolling_stride=0, ran with the default in its place."""
    from megagpt.eval.harness import MegagptLM

    with pytest.raises(ConfigError, match=re.escape(message)):
        MegagptLM(checkpoint="no-such-run", max_batch_size=None, **args)


def test_settings_left_empty_are_empty_text(tmp_path):
    """`answer_prefix:` written with no value is YAML's null: it means no prefix, as `stop:` means no stop."""
    from megagpt.eval.tasks import load_task

    (tmp_path / "t.jsonl").write_text('{"target": "a"}\n')
    (tmp_path / "t.yaml").write_text("type: completion\ntest: t.jsonl\nprompt: x\nanswer_prefix:\nseparator:\n"
                                     "stop:\n")
    task = load_task(str(tmp_path / "t.yaml"))
    assert (task.answer_prefix, task.separator, task.stop) == ("", "", "")


def test_lm_eval_adapter_requests_equal_megagpts_own_scores(scorer, tok):
    """The adapter's three request kinds, on the module's random model: loglikelihood as the scorer's
    continuation, loglikelihood_rolling as the perplexity windows' total, generate_until as greedy decoding."""
    from types import SimpleNamespace

    from megagpt.eval.harness import MegagptLM
    from megagpt.eval.perplexity import perplexity
    from megagpt.generation import Sampling, generate

    lm = MegagptLM.__new__(MegagptLM)
    lm.scorer, lm.tok, lm.rolling_stride = scorer, tok, 16
    ask = lambda *args: SimpleNamespace(args=args)  # noqa: E731 (lm-eval's Instance carries .args)
    (logp, greedy), = lm.loglikelihood([ask("def add(a, b):", " return")])
    assert (logp, greedy) == scorer.continuation(tok.encode("def add(a, b):"), tok.encode(" return"))[:2]
    text = "class A:\n    pass\n" * 10
    rolled, = lm.loglikelihood_rolling([ask(text)])
    stream = [tok.eod] + tok.encode(text)
    ours = perplexity(scorer, tok, stream, 16)
    assert rolled == pytest.approx(-ours["nll"] * ours["tokens"], rel=1e-6)
    out, = lm.generate_until([ask("import os\n", {"until": ["\n\n"], "max_gen_toks": 6})])
    new = generate(scorer.model, torch.tensor([tok.encode("import os\n")]), Sampling(6, temperature=0.0),
                   eod=tok.eod)[0, len(tok.encode("import os\n")):].tolist()
    full = tok.decode(new[: new.index(tok.eod)] if tok.eod in new else new)
    assert out == full.split("\n\n")[0]


def test_contamination_finds_the_planted_records_and_splits_the_scores(scorer, tok, tmp_path):
    """A corpus holding two test records' text (one inside a longer document, one whole and short) marks
    exactly those dirty; the share counts their n-grams; scores are given for both subsets."""
    from megagpt.data.ngrams import words
    from megagpt.eval.contamination import contamination, corpus_documents, gram_size, record_text
    from megagpt.eval.icl import evaluate
    from megagpt.eval.tasks import load_task

    task = load_task(os.path.join(TASKS, "capitals.yaml"))
    texts = [record_text(task, r) for r in task.test]
    lengths = [len(words(t)) for t in texts]
    n = gram_size(lengths)
    assert n == min(lengths) == 11  # 8 records: the 5th percentile is the shortest, within GPT-3's [8, 13]
    assert gram_size([3] * 20) == 8 and gram_size([40] * 20) == 13
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "Some crawl text. " + texts[2] + " More text after it."}) + "\n"
                      + json.dumps({"text": "Unrelated words about rivers and mountains, nothing else."}) + "\n")
    found = contamination(task, corpus_documents([str(corpus)], tok))
    assert found["dirty"] == [i == 2 for i in range(8)]
    planted = len(words(texts[2])) - n + 1
    assert found["found"] == planted and found["share"] == pytest.approx(planted / found["ngrams"])
    assert found["whole_records"] == 0  # every record holds 11 words or more
    short = dataclasses.replace(task, prompt="{country}", test=task.test[:3])  # records shorter than 8 words
    assert contamination(short, []) | {"dirty": None} == {"n": 8, "ngrams": 3, "whole_records": 3, "found": 0,
                                                          "share": 0.0, "dirty": None}
    result = evaluate(scorer, tok, task, contamination=found)
    c = result["contamination"]
    assert (c["clean"]["records"], c["dirty"]["records"]) == (7, 1)
    assert c["dirty"]["accuracy"] == float(result["rows"][2]["correct"])
    assert c["clean"]["accuracy"] == pytest.approx(sum(r["correct"] for i, r in enumerate(result["rows"]) if i != 2) / 7)
