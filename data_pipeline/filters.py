"""FineWeb's heuristic filters, in FineWeb's order: Gopher repetition, Gopher quality, C4, FineWeb.

Each rule is a key of FiltersConfig (null turns it off) and a drop names the key it broke. The
C4 rules also clean: lines that break a C4 line rule leave the document, and the FineWeb rules
and every later stage see what remains, as in FineWeb. Sources of the rules and their defaults:
Rae et al. 2021 (Gopher, Table A1 and App. A.1.1), Raffel et al. 2020 (C4, Sec. 2.2, and its
reference code's policy and long-word lines), Penedo et al. 2024 (FineWeb, Sec. 3.3 and its
datatrove configuration). Written here rather than taken from datatrove, which would bring
spaCy and its own pipeline runtime into ours; benchmarks/filters_vs_datatrove.py compares the
two on the same pages.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Optional

import numpy as np

from data_pipeline.config import FiltersConfig
from data_pipeline.text import ends_sentence, sentence_count, words

_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAKS = re.compile(r"\n+")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_C4_END = (".", "?", "!", '"', "'")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def apply_filters(text: str, cfg: FiltersConfig) -> tuple[str, Optional[str]]:
    """(the text the later stages see, the rule it broke or None)."""
    if not cfg.enabled:
        return text, None
    tokens = words(text)
    reason = gopher_repetition(text, tokens, cfg) or gopher_quality(text, tokens, cfg)
    if reason:
        return text, reason
    text, reason = c4(text, cfg)
    return text, reason or fineweb(text, cfg)


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(how many items repeat an earlier one, their characters)."""
    seen, count, chars = set(), 0, 0
    for item in items:
        if item in seen:
            count, chars = count + 1, chars + len(item)
        else:
            seen.add(item)
    return count, chars


class _NGrams:
    """A page's word n-grams as 64-bit hashes of their token ids, with their lengths in characters.

    Hashes rather than joined strings: the repetition rules look at every n-gram for n = 2..10,
    and building those strings was two thirds of the filters' time.
    """

    def __init__(self, tokens: list[str]):
        ids: dict[str, int] = {}
        self.ids = np.array([ids.setdefault(t, len(ids) + 1) for t in tokens], dtype=np.uint64)
        self.ends = np.concatenate([[0], np.cumsum([len(t) for t in tokens])])

    def __call__(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hash, characters without spaces) of the n-gram at each position."""
        m = max(len(self.ids) - n + 1, 0)
        h = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):  # the polynomial hash wraps modulo 2^64 on purpose
            for k in range(n):
                h = h * np.uint64(1_000_003) + self.ids[k:k + m]
        return h, self.ends[n:n + m] - self.ends[:m]


def _top_ngram_chars(grams: _NGrams, n: int) -> int:
    """Characters (spaces between words included) of the most frequent n-gram times its count; of
    equally frequent ones, the first to occur, as Counter.most_common picks among strings."""
    hashes, chars = grams(n)
    if not len(hashes):
        return 0
    _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    top = counts.max()
    return int((chars[first[counts == top].min()] + n - 1) * top)


def _duplicated_ngram_chars(grams: _NGrams, n: int) -> int:
    """Characters of the n-grams that repeat an earlier one, each repeated span counted once
    (a match skips its n tokens), without the spaces between words, as Gopher counts them."""
    hashes, chars = grams(n)
    if len(np.unique(hashes)) == len(hashes):  # most pages: nothing repeats, no walk needed
        return 0
    hashes, chars = hashes.tolist(), chars.tolist()
    seen, total, i = set(), 0, 0
    while i < len(hashes):
        if hashes[i] in seen:
            total, i = total + chars[i], i + n
        else:
            seen.add(hashes[i])
            i += 1
    return total


def gopher_repetition(text: str, tokens: list[str], cfg: FiltersConfig) -> Optional[str]:
    if not text:
        return "empty"
    paragraphs = _PARAGRAPH_BREAK.split(text.strip())
    count, chars = _duplicates(paragraphs)
    if cfg.dup_para_frac is not None and count / len(paragraphs) > cfg.dup_para_frac:
        return "dup_para_frac"
    if cfg.dup_para_char_frac is not None and chars / len(text) > cfg.dup_para_char_frac:
        return "dup_para_char_frac"
    lines = _LINE_BREAKS.split(text)
    count, chars = _duplicates(lines)
    if cfg.dup_line_frac is not None and count / len(lines) > cfg.dup_line_frac:
        return "dup_line_frac"
    if cfg.dup_line_char_frac is not None and chars / len(text) > cfg.dup_line_char_frac:
        return "dup_line_char_frac"
    grams = _NGrams(tokens)
    for n, limit in sorted(cfg.top_ngram_char_frac.items()):
        if _top_ngram_chars(grams, n) / len(text) > limit:
            return f"top_{n}gram_char_frac"
    for n, limit in sorted(cfg.dup_ngram_char_frac.items()):
        if _duplicated_ngram_chars(grams, n) / len(text) > limit:
            return f"dup_{n}gram_char_frac"
    return None


def _is_symbol(token: str) -> bool:
    """Only punctuation, symbols or control characters: no word for Gopher's counts."""
    return all(unicodedata.category(c)[0] in "PSC" for c in token)


def gopher_quality(text: str, tokens: list[str], cfg: FiltersConfig) -> Optional[str]:
    if not tokens:
        return "min_words"
    real = [t for t in tokens if not _is_symbol(t)]
    if cfg.min_words is not None and len(real) < cfg.min_words:
        return "min_words"
    if cfg.max_words is not None and len(real) > cfg.max_words:
        return "max_words"
    if real:
        mean = sum(map(len, real)) / len(real)
        if cfg.min_mean_word_length is not None and mean < cfg.min_mean_word_length:
            return "min_mean_word_length"
        if cfg.max_mean_word_length is not None and mean > cfg.max_mean_word_length:
            return "max_mean_word_length"
    n = len(tokens)
    if cfg.max_symbol_word_ratio is not None:
        if text.count("#") / n > cfg.max_symbol_word_ratio:
            return "max_symbol_word_ratio (#)"
        if (text.count("...") + text.count("\u2026")) / n > cfg.max_symbol_word_ratio:
            return "max_symbol_word_ratio (...)"
    lines = text.splitlines() or [""]
    if cfg.max_bullet_lines_ratio is not None and \
            sum(line.lstrip().startswith(("\u2022", "-")) for line in lines) / len(lines) > cfg.max_bullet_lines_ratio:
        return "max_bullet_lines_ratio"
    if cfg.max_ellipsis_lines_ratio is not None and \
            sum(line.rstrip().endswith(("...", "\u2026")) for line in lines) / len(lines) > cfg.max_ellipsis_lines_ratio:
        return "max_ellipsis_lines_ratio"
    if cfg.min_alpha_word_fraction is not None and \
            sum(any(c.isalpha() for c in t) for t in tokens) / n < cfg.min_alpha_word_fraction:
        return "min_alpha_word_fraction"
    if cfg.min_stop_words is not None and len(set(cfg.stop_words).intersection(tokens)) < cfg.min_stop_words:
        return "min_stop_words"
    return None


def c4(text: str, cfg: FiltersConfig) -> tuple[str, Optional[str]]:
    """C4's line rules (a breaking line leaves the text) and document rules (the text is dropped)."""
    kept, sentences = [], 0
    for line in text.splitlines():
        line = line.strip()
        line_words = line.split()
        if cfg.c4_max_word_length is not None and any(len(w) > cfg.c4_max_word_length for w in line_words):
            continue
        if cfg.c4_remove_citations:
            line = _CITATION.sub("", line)
        if cfg.c4_terminal_punct and (not line.endswith(_C4_END) or line.endswith("...")):
            continue
        if cfg.c4_min_words_per_line is not None and len(line_words) < cfg.c4_min_words_per_line:
            continue
        lower = line.lower()
        if cfg.c4_lorem_ipsum and "lorem ipsum" in lower:
            return text, "c4_lorem_ipsum"
        if cfg.c4_javascript and "javascript" in lower:
            continue
        if cfg.c4_curly_bracket and "{" in line:
            return text, "c4_curly_bracket"
        if cfg.c4_policy and any(p in lower for p in _POLICY):
            continue
        if cfg.c4_min_sentences is not None:
            sentences += sentence_count(line)
        kept.append(line)
    if cfg.c4_min_sentences is not None and sentences < cfg.c4_min_sentences:
        return text, "c4_min_sentences"
    return "\n".join(kept).strip(), None


def fineweb(text: str, cfg: FiltersConfig) -> Optional[str]:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return "empty"
    if cfg.min_line_punct_ratio is not None and \
            sum(ends_sentence(line) for line in lines) / len(lines) < cfg.min_line_punct_ratio:
        return "min_line_punct_ratio"
    if cfg.max_short_line_ratio is not None and \
            sum(len(line) <= cfg.short_line_length for line in lines) / len(lines) > cfg.max_short_line_ratio:
        return "max_short_line_ratio"
    if cfg.max_dup_line_char_ratio is not None and \
            _duplicates(lines)[1] / max(len(text.replace("\n", "")), 1) > cfg.max_dup_line_char_ratio:
        return "max_dup_line_char_ratio"
    if cfg.max_newline_word_ratio is not None and \
            text.count("\n") / max(len(words(text)), 1) > cfg.max_newline_word_ratio:
        return "max_newline_word_ratio"
    return None
