"""Benchmark decontamination as GPT-3 did it (Brown et al. 2020, Appendix C).

A document sharing a 13-gram (lower-cased words) with any benchmark example loses that
13-gram and 200 characters on either side; it is split where text was removed; pieces
under 200 characters are dropped; a document split into more than 10 pieces is dropped.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

_WORD = re.compile(r"\w+")


def ngram_hashes(text: str, n: int) -> set[int]:
    words = [m.group().lower() for m in _WORD.finditer(text)]
    return {hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)}


class Decontaminator:
    def __init__(self, benchmark_texts: Iterable[str], n: int = 13, margin: int = 200, min_piece: int = 200,
                 max_pieces: int = 10):
        self.n, self.margin, self.min_piece, self.max_pieces = n, margin, min_piece, max_pieces
        self.grams: set[int] = set()
        for text in benchmark_texts:
            self.grams |= ngram_hashes(text, n)

    def clean(self, text: str) -> tuple[list[str], Optional[str], int]:
        """(pieces to keep, drop reason or None, number of benchmark 13-grams found)."""
        words = list(_WORD.finditer(text))
        cuts = []
        for i in range(len(words) - self.n + 1):
            if hash(tuple(w.group().lower() for w in words[i:i + self.n])) in self.grams:
                cuts.append((max(0, words[i].start() - self.margin), min(len(text), words[i + self.n - 1].end() + self.margin)))
        if not cuts:
            return [text], None, 0
        pieces, pos = [], 0
        for start, end in _merge(cuts):
            pieces.append(text[pos:start])
            pos = end
        pieces.append(text[pos:])
        pieces = [p.strip() for p in pieces]
        if len(pieces) > self.max_pieces:
            return [], f"split into more than {self.max_pieces} pieces", len(cuts)
        kept = [p for p in pieces if len(p) >= self.min_piece]
        return kept, (None if kept else "nothing left after removing benchmark overlap"), len(cuts)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]
