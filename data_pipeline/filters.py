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
import time
from collections import Counter
from itertools import chain
from typing import Optional

import numpy as np
import regex

from data_pipeline.config import FiltersConfig
from data_pipeline.text import TokenTable, ends_sentence, sentences_in, words

_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAKS = re.compile(r"\n+")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_C4_END = (".", "?", "!", '"', "'")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def apply_filters(text: str, cfg: FiltersConfig, seconds: Optional[Counter] = None) -> tuple[str, Optional[str]]:
    """(the text the later stages see, the rule it broke or None). With `seconds`, adds each
    filter's time to it under its name ("words": splitting the page into tokens, done once)."""
    if not cfg.enabled:
        return text, None
    clock = _Stopwatch(seconds)
    lines = text.splitlines()
    line_tokens = [words(line) for line in lines]  # a page's tokens are its lines' tokens (text.words)
    tokens = list(chain.from_iterable(line_tokens))
    clock.lap("words")
    reason = gopher_repetition(text, tokens, cfg)
    clock.lap("gopher_repetition")
    if reason:
        return text, reason
    reason = gopher_quality(text, tokens, cfg, lines)
    clock.lap("gopher_quality")
    if reason:
        return text, reason
    kept, kept_tokens, reason = _c4_lines(lines, line_tokens, cfg)
    clock.lap("c4")
    if reason:
        return text, reason
    text = "\n".join(kept).strip()
    reason = _fineweb(text, [line for line in kept if line], sum(map(len, kept_tokens)), cfg)
    clock.lap("fineweb")
    return text, reason


class _Stopwatch:
    """Adds the time since the last lap to `seconds[name]`; does nothing without `seconds`."""

    def __init__(self, seconds: Optional[Counter]):
        self.seconds, self.last = seconds, time.perf_counter() if seconds is not None else 0.0

    def lap(self, name: str) -> None:
        if self.seconds is not None:
            now = time.perf_counter()
            self.seconds[name] += now - self.last
            self.last = now


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
        ids = {t: i + 1 for i, t in enumerate(dict.fromkeys(tokens))}
        self.ids = np.fromiter(map(ids.__getitem__, tokens), dtype=np.uint64, count=len(tokens))
        self.ends = np.concatenate([[0], np.cumsum(np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens)))])
        self._hashes = {1: self.ids}

    def __call__(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hash, characters without spaces) of the n-gram at each position."""
        m = max(len(self.ids) - n + 1, 0)
        return self._hash(n)[:m], self.ends[n:n + m] - self.ends[:m]

    def _hash(self, n: int) -> np.ndarray:
        """The n-gram hashes, each n extending the (n-1)-gram's by one token."""
        if n not in self._hashes:
            shorter = self._hash(n - 1)
            m = max(len(self.ids) - n + 1, 0)
            with np.errstate(over="ignore"):  # the polynomial hash wraps modulo 2^64 on purpose
                self._hashes[n] = shorter[:m] * np.uint64(1_000_003) + self.ids[n - 1:n - 1 + m]
        return self._hashes[n]


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
    """Characters of the n-grams that repeat an earlier one, each repeated span counted once, without
    the spaces between words, as Gopher counts them: walking the page, an n-gram seen before at a
    position the walk visited is a match, adds its characters and skips its n tokens.

    The walk steps only through repeats: a first occurrence is never a match, and it was visited
    unless an earlier match skipped over it."""
    hashes, chars = grams(n)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    first_at = first[inverse]  # where each position's n-gram first occurs
    repeats = np.flatnonzero(first_at != np.arange(len(hashes)))
    if not len(repeats):  # most pages: nothing repeats, no walk needed
        return 0
    skipped = np.zeros(len(hashes), dtype=bool)
    visited_repeats, total, resume = set(), 0, 0
    for i, gram, earliest, size in zip(repeats.tolist(), inverse[repeats].tolist(), first_at[repeats].tolist(),
                                       chars[repeats].tolist()):
        if i < resume:  # inside the last match's span
            continue
        if gram in visited_repeats or not skipped[earliest]:
            total += size
            skipped[i + 1:i + n] = True
            resume = i + n
        else:
            visited_repeats.add(gram)
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
    for n, limit in sorted((cfg.top_ngram_char_frac or {}).items()):
        if _top_ngram_chars(grams, n) / len(text) > limit:
            return f"top_ngram_char_frac[{n}]"  # the key it broke, as each drop names it
    for n, limit in sorted((cfg.dup_ngram_char_frac or {}).items()):
        chars = _duplicated_ngram_chars(grams, n)
        if chars / len(text) > limit:
            return f"dup_ngram_char_frac[{n}]"
        if not chars:
            break  # no n-gram repeats, so no longer one does either
    return None


_SYMBOL = regex.compile(r"[\p{P}\p{S}\p{C}]+")  # only punctuation, symbols or control characters: no word
_LETTER = regex.compile(r"\p{L}")  # what str.isalpha accepts
_WORD, _HAS_LETTER = 1, 2
_KINDS = TokenTable(lambda t: (0 if _SYMBOL.fullmatch(t) else _WORD) | (_HAS_LETTER if _LETTER.search(t) else 0))


def gopher_quality(text: str, tokens: list[str], cfg: FiltersConfig, lines: Optional[list[str]] = None) -> Optional[str]:
    if not tokens:
        return "min_words"
    counts = Counter(tokens)  # each distinct token judged once: pages repeat most of theirs
    distinct = len(counts)
    times = np.fromiter(counts.values(), dtype=np.int64, count=distinct)
    kinds = np.array(_KINDS(counts), dtype=np.int64)
    lengths = np.fromiter(map(len, counts), dtype=np.int64, count=distinct)
    word = (kinds & _WORD).astype(bool)
    real_count = int(times[word].sum())
    if cfg.min_words is not None and real_count < cfg.min_words:
        return "min_words"
    if cfg.max_words is not None and real_count > cfg.max_words:
        return "max_words"
    if real_count:
        mean = float((lengths * times)[word].sum()) / real_count
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
    lines = (text.splitlines() if lines is None else lines) or [""]
    if cfg.max_bullet_lines_ratio is not None and \
            sum(line.lstrip().startswith(("\u2022", "-")) for line in lines) / len(lines) > cfg.max_bullet_lines_ratio:
        return "max_bullet_lines_ratio"
    if cfg.max_ellipsis_lines_ratio is not None and \
            sum(line.rstrip().endswith(("...", "\u2026")) for line in lines) / len(lines) > cfg.max_ellipsis_lines_ratio:
        return "max_ellipsis_lines_ratio"
    if cfg.min_alpha_word_fraction is not None and \
            int(times[(kinds & _HAS_LETTER).astype(bool)].sum()) / n < cfg.min_alpha_word_fraction:
        return "min_alpha_word_fraction"
    if cfg.min_stop_words is not None and len(set(cfg.stop_words).intersection(counts)) < cfg.min_stop_words:
        return "min_stop_words"
    return None


def c4(text: str, cfg: FiltersConfig) -> tuple[str, Optional[str]]:
    """C4's line rules (a breaking line leaves the text) and document rules (the text is dropped)."""
    lines = text.splitlines()
    kept, _, reason = _c4_lines(lines, [words(line) for line in lines], cfg)
    return (text, reason) if reason else ("\n".join(kept).strip(), None)


def _c4_lines(lines: list[str], line_tokens: list[list[str]], cfg: FiltersConfig
              ) -> tuple[list[str], list[list[str]], Optional[str]]:
    """(the lines C4's line rules keep, stripped, and their tokens; the document rule broken or None)."""
    kept, kept_tokens, sentences = [], [], 0
    for line, tokens in zip(lines, line_tokens):
        line = line.strip()
        line_words = line.split()
        if cfg.c4_max_word_length is not None and len(line) > cfg.c4_max_word_length and \
                any(len(w) > cfg.c4_max_word_length for w in line_words):
            continue
        if cfg.c4_remove_citations and "[" in line:
            cited = _CITATION.sub("", line)
            if cited != line:
                line, tokens = cited, words(cited)
        if cfg.c4_terminal_punct and (not line.endswith(_C4_END) or line.endswith("...")):
            continue
        if cfg.c4_min_words_per_line is not None and len(line_words) < cfg.c4_min_words_per_line:
            continue
        lower = line.lower()
        if cfg.c4_lorem_ipsum and "lorem ipsum" in lower:
            return [], [], "c4_lorem_ipsum"
        if cfg.c4_javascript and "javascript" in lower:
            continue
        if cfg.c4_curly_bracket and "{" in line:
            return [], [], "c4_curly_bracket"
        if cfg.c4_policy and any(p in lower for p in _POLICY):
            continue
        if cfg.c4_min_sentences is not None:
            sentences += sentences_in(tokens)
        kept.append(line)
        kept_tokens.append(tokens)
    if cfg.c4_min_sentences is not None and sentences < cfg.c4_min_sentences:
        return [], [], "c4_min_sentences"
    return kept, kept_tokens, None


def fineweb(text: str, cfg: FiltersConfig) -> Optional[str]:
    return _fineweb(text, [line for line in text.split("\n") if line.strip()], len(words(text)), cfg)


def _fineweb(text: str, lines: list[str], n_words: int, cfg: FiltersConfig) -> Optional[str]:
    """FineWeb's rules on a text, given its non-blank lines and its token count."""
    if not lines:
        return "c4 line rules removed every line"  # (c4_min_words_per_line, c4_max_word_length...)
    if cfg.min_line_punct_ratio is not None and \
            sum(ends_sentence(line) for line in lines) / len(lines) < cfg.min_line_punct_ratio:
        return "min_line_punct_ratio"
    if cfg.max_short_line_ratio is not None and \
            sum(len(line) <= cfg.short_line_length for line in lines) / len(lines) > cfg.max_short_line_ratio:
        return "max_short_line_ratio"
    if cfg.max_dup_line_char_ratio is not None and \
            _duplicates(lines)[1] / max(len(text.replace("\n", "")), 1) > cfg.max_dup_line_char_ratio:
        return "max_dup_line_char_ratio"
    if cfg.max_newline_word_ratio is not None and text.count("\n") / max(n_words, 1) > cfg.max_newline_word_ratio:
        return "max_newline_word_ratio"
    return None
