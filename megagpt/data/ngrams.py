"""Word n-grams as GPT-3 compared texts for contamination (Brown et al. 2020, Appendix C): lower-cased
words, hashed. Shared by the corpus pipeline's decontamination and the evaluation's report."""

from __future__ import annotations

import re

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return [m.group().lower() for m in WORD.finditer(text)]


def ngram_hashes(text: str, n: int) -> set[int]:
    w = words(text)
    return {hash(tuple(w[i:i + n])) for i in range(len(w) - n + 1)}
