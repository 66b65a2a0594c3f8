"""How much of an evaluation file the training corpus already contains, as GPT-3 reported it
(Brown et al. 2020, Appendix C): the share of the file's word n-grams found in the corpus, and
each test record called dirty when any of its n-grams is, so scores split into clean and dirty
subsets.

n is GPT-3's: the 5th percentile of the records' lengths in words, at least 8 and at most 13.
A record shorter than n contributes its whole word sequence as one gram. A record's text is its
question with every answer it offers (the target, the choices, the accepted answers).

The corpus is streamed once and only the evaluation's n-grams are kept in memory, so it can be
as large as the training data: Megatron .bin/.idx shards (decoded document by document with
the tokenizer) or .txt / .jsonl[.gz] files.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from megagpt.data.ngrams import words
from megagpt.eval.tasks import Task


def record_text(task: Task, record: dict) -> str:
    answers = {"completion": lambda r: [r["target"]], "multiple_choice": lambda r: r["choices"],
               "generation": lambda r: r["answers"]}[task.type](record)
    return " ".join([task.question(record), *answers])


def gram_size(lengths: list[int]) -> int:
    ordered = sorted(lengths)
    fifth = ordered[int(0.05 * (len(ordered) - 1))] if ordered else 13
    return max(8, min(13, fifth))


def corpus_documents(paths: list[str], tok) -> Iterator[str]:
    from megagpt.data.shards import source_documents

    for doc in source_documents(paths, "--corpus", tok):
        yield doc if isinstance(doc, str) else tok.decode(doc)


def contamination(task: Task, corpus: Iterable[str]) -> dict:
    texts = [words(record_text(task, r)) for r in task.test]
    n = gram_size([len(w) for w in texts])
    owners: dict[int, list[int]] = {}
    for index, w in enumerate(texts):
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)] or [tuple(w)]
        for gram in set(grams):
            owners.setdefault(hash(gram), []).append(index)
    spans = {n} | {len(w) for w in texts if 0 < len(w) < n}  # short records are searched for whole
    found: set[int] = set()
    for document in corpus:
        w = words(document)
        for span in spans:
            for i in range(len(w) - span + 1):
                h = hash(tuple(w[i:i + span]))
                if h in owners:
                    found.add(h)
    dirty = sorted({i for h in found for i in owners[h]})
    whole = len({tuple(w) for w in texts if 0 < len(w) < n})  # grams that are a short record's whole text
    return {"n": n, "ngrams": len(owners), "whole_records": whole, "found": len(found),
            "share": len(found) / max(len(owners), 1), "dirty": [i in set(dirty) for i in range(len(texts))]}
