"""Words and sentences as the heuristic filters count them.

FineWeb's thresholds were tuned on spaCy's English tokenizer (through datatrove), which makes
punctuation its own token: "don't stop." is four words there, two for str.split. The rules
count over such tokens, so the same thresholds need the same kind of token. spaCy is a large
dependency for a tokenizer; this is a regex form of its English rules (URLs and abbreviations
whole, contractions and punctuation split off, hyphens between words split), which gives the
same keep/drop decisions on >= 99% of pages (tests/unit/test_filters.py, against recorded
datatrove decisions).
"""

from __future__ import annotations

import unicodedata
from typing import Callable

import regex

_TOKEN = regex.compile(
    r"""
      (?:https?://|www\.)\S+                      # a URL, whole
    | (?:\p{L}\.){2,}                             # U.S.  e.g.  i.e.
    | (?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|vs)\.(?=\s|$) # titles keep their period
    | \p{L}+(?=n't)                               # do|n't  ca|n't
    | n't | '(?:s|re|ll|ve|d|m)(?!\w)             # contraction suffixes
    | @\w+                                        # handles
    | \w+(?:[.,:+]\w+)*                           # words, 1,000.50, 12:30, y+1
    | \.{2,} | -{2,}                              # ellipses and dashes as one token
    | \S                                          # any other character: a token of its own
    """,
    regex.VERBOSE,
)
_SENTENCE_END = regex.compile(r"\p{Sentence_Terminal}")


class TokenTable:
    """A property of tokens, computed once per distinct token and kept across pages (a corpus keeps
    repeating its vocabulary, and the filters look at every token); cleared past `limit` entries."""

    def __init__(self, compute: Callable[[str], object], limit: int = 1 << 20):
        self.compute, self.limit, self.table = compute, limit, {}

    def __call__(self, tokens) -> list:
        values = list(map(self.table.get, tokens))
        if None in values:
            if len(self.table) > self.limit:
                self.table.clear()
            for token in tokens:
                if token not in self.table:
                    self.table[token] = self.compute(token)
            values = list(map(self.table.get, tokens))
        return values


def words(text: str) -> list[str]:
    """spaCy-English-like tokens: words, numbers and punctuation marks. None spans whitespace, so a
    text's tokens are its lines' tokens one after another (the filters tokenize each line once)."""
    return _TOKEN.findall(text)


def is_punctuation(token: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in token)


def sentence_count(text: str) -> int:
    """Sentences as spaCy's sentencizer cuts them: a new one starts at the first token that is not
    punctuation after a sentence-ending mark (so "Mr." and "e.g." end none, "?!" ends one)."""
    return sentences_in(words(text))


def _sentence_role(token: str) -> str:
    """T: ends a sentence; P: other punctuation; W: anything else."""
    if len(token) == 1 and _SENTENCE_END.match(token):
        return "T"
    return "P" if is_punctuation(token) else "W"


_ROLES = TokenTable(_sentence_role)
_SENTENCE_START = regex.compile(r"(?:^[TP]*|T[TP]*)W")  # the first W of the text, and the first W after a T


def sentences_in(tokens: list[str]) -> int:
    """sentence_count over a text's tokens."""
    return len(_SENTENCE_START.findall("".join(_ROLES(tokens))))


def ends_sentence(line: str) -> bool:
    """The line's last character is a sentence terminal (Unicode Sentence_Terminal: . ! ? and kin)."""
    return bool(line) and bool(_SENTENCE_END.match(line[-1]))
