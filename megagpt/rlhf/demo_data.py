"""Instruction data for the demo and the tests, with a stated, checkable preference.

Prompts ask about a standard-library docstring's subject; responses are word runs of
the docstrings. The planted preference: a response is better the more often it names
the keyword (default "file"). So:

    demonstrations   each response names the keyword once or twice
    comparisons      K responses naming it 0..K-1 times, ranked by that count (best first)
    prompts          the same kind of prompt, for PPO rollouts

A reward model trained on the comparisons should rank held-out pairs by keyword count,
and PPO against it should make the policy say the keyword more often.
"""

from __future__ import annotations

import json
import os
import random

from megagpt.data.demo_corpus import stdlib_docstrings

KEYWORD = "file"


def _word_pool(limit: int = 400) -> tuple[list[str], list[str]]:
    """(subjects, plain words): docstring openings to ask about, and keyword-free words to answer with."""
    subjects, words = [], []
    for doc in stdlib_docstrings():
        first = " ".join(doc.split()[:6])
        subjects.append(first)
        words += [w.strip(".,;:()`'\"").lower() for w in doc.split()[:40]]
        if len(subjects) >= limit:
            break
    return subjects, sorted({w for w in words if w.isalpha() and KEYWORD not in w and len(w) < 10})


def _response(rng: random.Random, words: list[str], mentions: int, length: int = 8) -> str:
    """`length` words, `mentions` of them the keyword: only the keyword tells responses apart, not length."""
    chosen = [rng.choice(words) for _ in range(length - mentions)]
    for _ in range(mentions):
        chosen.insert(rng.randrange(len(chosen) + 1), KEYWORD)
    return " " + " ".join(chosen) + "."


def prompt_text(subject: str) -> str:
    return f"Q: {subject}\nA:"


def write_instruct_data(out_dir: str, demonstrations: int = 120, comparisons: int = 200, prompts: int = 64,
                        k: int = 4, seed: int = 0) -> dict[str, str]:
    """Write demos.jsonl, comparisons.jsonl and prompts.jsonl; returns their paths by name."""
    rng = random.Random(seed)
    subjects, words = _word_pool()
    os.makedirs(out_dir, exist_ok=True)
    rows = {
        "demonstrations": [{"prompt": prompt_text(rng.choice(subjects)),
                            "response": _response(rng, words, rng.randint(1, 2))} for _ in range(demonstrations)],
        "comparisons": [],
        "prompts": [{"prompt": prompt_text(rng.choice(subjects))} for _ in range(prompts)],
    }
    for _ in range(comparisons):
        counts = list(range(k))[::-1]  # best (most mentions) first
        rows["comparisons"].append({"prompt": prompt_text(rng.choice(subjects)),
                                    "responses": [_response(rng, words, n) for n in counts]})
    paths = {}
    for name, items in rows.items():
        paths[name] = os.path.join(out_dir, f"{name}.jsonl")
        with open(paths[name], "w") as f:
            f.writelines(json.dumps(item) + "\n" for item in items)
    return paths


def keyword_count(text: str) -> int:
    return text.split().count(KEYWORD) + text.split().count(KEYWORD + ".")
