"""Word n-grams as GPT-3 compared texts for contamination (Brown et al. 2020, Appendix C): lower-cased
words, hashed. Shared by the corpus pipeline's decontamination and the evaluation's report."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

WORD = re.compile(r"\w+")
_ODD = np.uint64(0x9E3779B97F4A7C15)  # the rolling hash's base: odd, so each step is invertible mod 2**64


def words(text: str) -> list[str]:
    return [m.group().lower() for m in WORD.finditer(text)]


def window_hashes(tokens: Sequence[str], n: int) -> np.ndarray:
    """A 64-bit hash of each run of n consecutive words, in order (none for fewer than n words).

    Polynomial in the words' own hashes (Python's: equal within a process, not across processes,
    so only compare hashes one process made). Held as uint64 arrays, a benchmark set costs
    8 bytes an n-gram; a Python set of hashed tuples cost about 70, in every worker.
    """
    span = len(tokens) - n + 1
    if span <= 0:
        return np.empty(0, np.uint64)
    h = np.fromiter(map(hash, tokens), np.int64, len(tokens)).view(np.uint64)
    out = h[:span].copy()
    with np.errstate(over="ignore"):  # wrapping mod 2**64 is the hash
        for k in range(1, n):
            out = out * _ODD + h[k:k + span]
        return out ^ (out >> np.uint64(31))
