"""Benchmark decontamination as GPT-3 did it (Brown et al. 2020, Appendix C).

A document sharing a 13-gram (lower-cased words) with any benchmark example loses that
13-gram and 200 characters on either side; it is split where text was removed; pieces
under 200 characters are dropped; a document split into more than 10 pieces is dropped.
"""

from __future__ import annotations

import json
from typing import Iterable, Iterator, Optional

import numpy as np

from megagpt.data.ngrams import WORD as _WORD, window_hashes, words
from megagpt.errors import DataError

# Where common benchmark formats keep their text, read where a line lacks decontam.text_field: LAMBADA and plain
# (text), SQuAD and BoolQ (context, passage, question), RACE (article, question, options), MMLU and ARC (question,
# choices), TriviaQA and NQ (question, answer), HellaSwag (ctx, endings), PIQA (goal, sol1, sol2), WinoGrande
# (sentence, option1, option2), CoQA (story, questions, answers), ANLI and RTE (premise, hypothesis), completion
# tasks (target), prompt/completion pairs. Not every string: NQ's and TriviaQA's exports hold whole source documents
# (document, wiki_context, search_context), whose n-grams would cut most of a crawl.
KNOWN_FIELDS = ("text", "context", "passage", "article", "question", "questions", "options", "choices", "answer",
                "answers", "ctx", "endings", "goal", "sol1", "sol2", "sentence", "option1", "option2", "story",
                "premise", "hypothesis", "target", "prompt", "completion")


def benchmark_texts(path: str, fields: str = "text") -> Iterator[str]:
    """The text of each example of a benchmark file: .txt whole, .jsonl[.gz] per line: the `fields` it has (one
    name, or several joined by commas: decontam.text_field), else the KNOWN_FIELDS it has."""
    from megagpt.data.shards import text_kind
    from megagpt.files import jsonl_lines

    if text_kind(path) == "txt":
        with open(path, encoding="utf-8", errors="replace") as f:
            yield f.read()
        return
    wanted = [name.strip() for name in fields.split(",")]
    for lineno, line in jsonl_lines(path):
        try:
            example = json.loads(line)
        except ValueError:
            raise DataError(f"decontam: {path}:{lineno} is not JSON") from None
        if not isinstance(example, dict):
            raise DataError(f"decontam: {path}:{lineno} is not a JSON object")
        found = [example[k] for k in wanted if k in example] or [example[k] for k in KNOWN_FIELDS if k in example]
        text = " ".join(_strings(found))
        if not text:
            raise DataError(f"decontam: {path}:{lineno} has no {fields!r} field (decontam.text_field) nor any of "
                            f"{', '.join(KNOWN_FIELDS)} holding text")
        yield text


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


class Decontaminator:
    def __init__(self, benchmark_texts: Iterable[str], n: int = 13, margin: int = 200, min_piece: int = 200,
                 max_pieces: int = 10):
        self.n, self.margin, self.min_piece, self.max_pieces = n, margin, min_piece, max_pieces
        # sorted, unique: every finalize worker holds its own copy, 8 bytes an n-gram
        self.grams = np.unique(np.concatenate([np.empty(0, np.uint64)] +
                                              [window_hashes(words(text), n) for text in benchmark_texts]))

    def clean(self, text: str) -> tuple[list[str], Optional[str], int, int]:
        """(pieces to keep, drop reason or None, number of benchmark 13-grams found, pieces the cuts made: those
        kept and those under min_piece characters; a cut at the very start or end makes no empty piece)."""
        found = list(_WORD.finditer(text))
        windows = window_hashes([w.group().lower() for w in found], self.n)
        hits = np.empty(0, np.int64)
        if len(self.grams) and len(windows):  # a binary search per window: np.isin would sort the benchmark set again
            at = np.minimum(np.searchsorted(self.grams, windows), len(self.grams) - 1)
            hits = np.flatnonzero(self.grams[at] == windows)
        cuts = [(max(0, found[i].start() - self.margin), min(len(text), found[i + self.n - 1].end() + self.margin))
                for i in hits.tolist()]
        if not cuts:
            return [text], None, 0, 1
        pieces, pos = [], 0
        for start, end in _merge(cuts):
            pieces.append(text[pos:start])
            pos = end
        pieces.append(text[pos:])
        pieces = [p for p in (p.strip() for p in pieces) if p]
        if len(pieces) > self.max_pieces:
            return [], f"split into more than {self.max_pieces} pieces", len(cuts), len(pieces)
        kept = [p for p in pieces if len(p) >= self.min_piece]
        return kept, (None if kept else "nothing left after removing benchmark overlap"), len(cuts), len(pieces)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]
