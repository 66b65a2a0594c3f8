"""Heuristic quality rules; each returns the name of the rule a document breaks, or None."""

from __future__ import annotations

import re
from collections import Counter
from typing import Optional

from data_pipeline.config import FiltersConfig


_ALPHA_WORD = re.compile(r"\S*[^\W\d_]\S*")  # a whitespace-separated word holding at least one letter


def heuristic_reason(text: str, cfg: FiltersConfig) -> Optional[str]:
    words = text.split()
    n = len(words)
    if n < cfg.min_words:
        return "too few words"
    if n > cfg.max_words:
        return "too many words"
    mean_len = sum(map(len, words)) / n
    if not cfg.min_mean_word_length <= mean_len <= cfg.max_mean_word_length:
        return "mean word length"
    symbols = text.count("#") + text.count("...") + text.count("\u2026")
    if symbols / n > cfg.max_symbol_word_ratio:
        return "symbol to word ratio"
    if len(_ALPHA_WORD.findall(text)) / n < cfg.min_alpha_word_fraction:
        return "few alphabetic words"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        repeated = sum(c for c in Counter(lines).values() if c > 1)
        if repeated / len(lines) > cfg.max_duplicate_line_fraction:
            return "repeated lines"
    return None
