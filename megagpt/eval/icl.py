"""Zero-, one- and few-shot evaluation (GPT-2's zero-shot, GPT-3's in-context learning).

    megagpt eval icl --checkpoint DIR --task FILE [--shots K] [--seed S] [--limit N] [--nproc TP]

For each test record, K shots are drawn from the task's train split (without the record
itself, should it be there) by a generator seeded with (seed, record index), so a run is
reproducible and each record's shots are independent of the others'. The prompt is

    [description + separator] shot_1 + separator + ... + shot_K + separator + question

where a shot is its question followed by answer_prefix + its gold answer. Shots are dropped
from the front until the prompt and the longest answer fit the model's context (GPT-3 packed
as many as fit); the mean number used is reported, and how many records still had to lose
the start of their prompt (`prompts_cut`) or the start of an answer longer than the context
(`answers_cut`, scored on its last tokens).

Scores, per type:
    completion       accuracy: every target token is the model's greedy choice (LAMBADA's
                     exact match); also the target's mean log-likelihood per token
    multiple_choice  accuracy by the choice's total log-likelihood given the prompt, and by
                     the log-likelihood per token (GPT-3's normalisation for most tasks)
    generation       greedy decoding to the stop string or max_new_tokens; exact match and
                     token F1 against the best of the answers (SQuAD's normalisation)
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter

import torch

from megagpt.eval.scorer import Scorer
from megagpt.eval.tasks import Task


def shots_for(task: Task, index: int, record: dict, k: int, seed: int) -> list[dict]:
    pool = [r for r in task.train if r != record]  # by content: train may be the test file, or repeat a record
    if k > len(pool):
        from megagpt.errors import ConfigError

        raise ConfigError(f"--shots {k}: the task's train split has {len(pool)} records to draw from ({task.path})")
    return random.Random(f"{seed}:{index}").sample(pool, k)


def build_prompt(task: Task, shots: list[dict], record: dict) -> str:
    parts = [task.description] if task.description else []
    parts += [task.question(s) + task.answer_prefix + task.gold(s) for s in shots]
    parts.append(task.question(record))
    return task.separator.join(parts)


def answers_of(task: Task, record: dict) -> list[str]:
    """The continuations scored for a record: the target, or every choice."""
    if task.type == "completion":
        return [record["target"]]
    if task.type == "multiple_choice":
        return list(record["choices"])
    return []


def fitted_prompt(task: Task, tok, shots: list[dict], record: dict, context: int, room: int) -> tuple[list[int], int]:
    """The prompt's tokens with as many of the shots as leave `room` tokens, and how many that is."""
    for first in range(len(shots) + 1):
        ids = tok.encode(build_prompt(task, shots[first:], record))
        if len(ids) + room <= context:
            return ids, len(shots) - first
    return ids, 0  # even zero-shot is too long: the scorer keeps the prompt's last tokens


def evaluate(scorer: Scorer, tok, task: Task, shots: int = 0, seed: int = 1234, limit: int | None = None,
             contamination: dict | None = None) -> dict:
    """The task's scores; with `contamination` (megagpt.eval.contamination) also on its clean and dirty records."""
    records = task.test[:limit] if limit else task.test
    rows, used, cut = [], [], {"prompts_cut": 0, "answers_cut": 0}
    for index, record in enumerate(records):
        answers = [tok.encode(task.answer_prefix + a) for a in answers_of(task, record)]
        room = max((len(a) for a in answers), default=task.max_new_tokens)
        prompt, n = fitted_prompt(task, tok, shots_for(task, index, record, shots, seed), record, scorer.context, room)
        used.append(n)
        # said, not silent: a prompt that does not fit even alone loses its start; an answer longer than the
        # context is scored on its last tokens only, so its total is not comparable with the other choices'
        cut["prompts_cut"] += len(prompt) + room > scorer.context
        cut["answers_cut"] += any(len(a) > scorer.context - 1 for a in answers)
        if task.type == "generation":
            rows.append(_generation_row(scorer, tok, task, prompt, record))
            continue
        scored = scorer.continuations([(prompt, a) for a in answers])
        if task.type == "completion":
            logp, greedy, count = scored[0]
            rows.append({"correct": greedy, "logprob_per_token": logp / count})
        else:
            total = [s[0] for s in scored]
            per_token = [s[0] / s[2] for s in scored]
            # by text: a choice written twice scores alike, and either copy of the right one is right (MMLU
            # repeats options in a few records)
            choices, gold = record["choices"], record["choices"][record["label"]]
            rows.append({"correct": choices[_argmax(total)] == gold,
                         "correct_per_token": choices[_argmax(per_token)] == gold,
                         "logprobs": total})
    result = {"task": task.name, "type": task.type, "records": len(rows), "shots": shots,
              "mean_shots_used": sum(used) / len(used), **summarise(task.type, rows), **cut, "rows": rows}
    if contamination is not None:
        split = {"clean": [r for r, d in zip(rows, contamination["dirty"]) if not d],
                 "dirty": [r for r, d in zip(rows, contamination["dirty"]) if d]}
        result["contamination"] = {**{k: v for k, v in contamination.items() if k != "dirty"},
                                   **{name: {"records": len(part), **(summarise(task.type, part) if part else {})}
                                      for name, part in split.items()}}
    return result


def summarise(kind: str, rows: list[dict]) -> dict:
    n = len(rows)
    if kind == "completion":
        return {"accuracy": sum(r["correct"] for r in rows) / n,
                "mean_logprob_per_token": sum(r["logprob_per_token"] for r in rows) / n}
    if kind == "multiple_choice":
        return {"accuracy": sum(r["correct"] for r in rows) / n,
                "accuracy_per_token": sum(r["correct_per_token"] for r in rows) / n}
    return {"exact_match": sum(r["exact_match"] for r in rows) / n, "f1": sum(r["f1"] for r in rows) / n}


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])  # the first of equals, whatever the order


def _generation_row(scorer: Scorer, tok, task: Task, prompt: list[int], record: dict) -> dict:
    from megagpt.generation import Sampling, generate

    context = scorer.context
    budget = min(task.max_new_tokens, context - 1)
    prompt = prompt[-(context - budget):] or [tok.eod]  # an empty prompt: a new document's start, as generate's
    ids = torch.tensor([prompt], device=scorer.device)
    out = generate(scorer.model, ids, Sampling(max_new_tokens=budget, temperature=0.0), eod=tok.eod,
                   vocab=tok.vocab_size)[0, len(prompt):]
    new = out.tolist()
    text = tok.decode(new[: new.index(tok.eod)] if tok.eod in new else new)
    answer = text.split(task.stop)[0] if task.stop else text
    return {"prediction": answer.strip(), "exact_match": max(exact_match(answer, a) for a in record["answers"]),
            "f1": max(f1(answer, a) for a in record["answers"])}


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> float:
    return float(normalize(prediction) == normalize(answer))


def f1(prediction: str, answer: str) -> float:
    got, want = normalize(prediction).split(), normalize(answer).split()
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)
