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


def sentences_in(tokens: list[str]) -> int:
    """sentence_count over a text's tokens."""
    count, seen_end = 0, True
    for token in tokens:
        ends = len(token) == 1 and bool(_SENTENCE_END.match(token))
        if ends:
            seen_end = True
        elif seen_end and not is_punctuation(token):
            count, seen_end = count + 1, False
    return count


def ends_sentence(line: str) -> bool:
    """The line's last character is a sentence terminal (Unicode Sentence_Terminal: . ! ? and kin)."""
    return bool(line) and bool(_SENTENCE_END.match(line[-1]))
