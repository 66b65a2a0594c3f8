"""A crawl with planted truth, for the demo, the tests and the benchmark.

English pages are the standard library's longer docstrings that pass the default filters (real prose on every
machine), topped up with pages chained from their words;
the plant: exact copies, near copies at measured 5-gram Jaccard similarities, pages in
other languages (sentences drawn from common-word lists), keyword spam, broken records
(binary, non-HTML, invalid UTF-8, empty) and optionally a truncated file.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
import random
import re
import uuid
from dataclasses import dataclass, field

from data_pipeline.config import FiltersConfig
from data_pipeline.dedup import jaccard
from data_pipeline.filters import apply_filters

FOREIGN_WORDS = {
    "fr": "le la les un une des et est dans pour que qui sur avec pas plus nous vous ils elle être avoir faire "
          "aussi comme mais tout bien très sans sous entre après avant encore toujours jamais maison ville temps "
          "année jour monde pays gouvernement politique histoire enfants travail".split(),
    "de": "der die das und ist nicht ein eine mit auf für von dem den sich auch als wie aber noch nach bei "
          "oder wenn nur schon sehr immer zwischen unter Jahr Stadt Zeit Welt Land Regierung Geschichte Kinder "
          "Arbeit werden haben können müssen".split(),
    "es": "el la los las un una y es en por para que con no más como pero todo muy sin entre después antes "
          "siempre nunca casa ciudad tiempo año día mundo país gobierno política historia niños trabajo "
          "también cuando donde".split(),
}


@dataclass
class Truth:
    """What was planted, by WARC-Record-ID."""

    english: list = field(default_factory=list)
    foreign: dict = field(default_factory=dict)  # id -> language
    exact_pairs: list = field(default_factory=list)  # (original id, copy id)
    near_pairs: list = field(default_factory=list)  # (original id, copy id, Jaccard)
    spam: list = field(default_factory=list)
    broken: dict = field(default_factory=dict)  # id -> kind
    truncated_files: list = field(default_factory=list)


def english_pages(count: int = 500) -> list[str]:
    """At least `count` English pages that the default filters keep: the standard library's docstrings
    that pass them, then pages chained from those docstrings' words to make up the number."""
    return list(_english_pages(count))


@functools.lru_cache(maxsize=4)
def _english_pages(count: int) -> tuple[str, ...]:
    from megagpt.data.demo_corpus import stdlib_docstrings

    def clean(text: str) -> bool:
        return apply_filters(text, FiltersConfig())[1] is None

    pages = [doc for doc in stdlib_docstrings() if len(doc.split()) >= 80 and "..." not in doc and "#" not in doc
             and clean(doc)]
    rng = random.Random(0)
    while len(pages) < count:
        pages += [p for p in markov_pages(pages, count - len(pages), rng) if clean(p)]
    return tuple(pages)


def markov_pages(seed_pages: list[str], count: int, rng: random.Random, words: int = 250) -> list[str]:
    """More English-looking pages than the stdlib holds: a word-bigram chain over its docstrings, cut
    into sentences at the words that end one, a few sentences to a paragraph."""
    successors: dict[str, list[str]] = {}
    for page in seed_pages:
        tokens = page.split()
        for a, b in zip(tokens, tokens[1:]):
            successors.setdefault(a, []).append(b)
    starts = [p.split()[0] for p in seed_pages]
    pages = []
    for _ in range(count):
        paragraphs, total = [], 0
        while total < words:
            sentences = []
            for _ in range(rng.randint(2, 5)):
                sentence = [rng.choice(starts)]
                while not (sentence[-1].endswith(".") and len(sentence) >= 6) and len(sentence) < 40:
                    sentence.append(rng.choice(successors.get(sentence[-1]) or starts))
                sentences.append(" ".join(sentence).rstrip(".") + ".")
                total += len(sentence)
            paragraphs.append(" ".join(sentences))
        pages.append("\n\n".join(paragraphs))
    return pages


def mutate(text: str, fraction: float, rng: random.Random) -> str:
    """Replace `fraction` of the words with fresh ones: fewer shared 5-grams."""
    parts = re.split(r"(\s+)", text)  # words at even places; the whitespace (line breaks) stays as it was
    words = [i for i in range(0, len(parts), 2) if parts[i]]
    for i in rng.sample(words, max(1, int(len(words) * fraction))):
        # the word's trailing punctuation stays too: sentences keep their ends (the filters count them)
        parts[i] = f"w{rng.randrange(10**6)}" + parts[i][len(parts[i].rstrip(".,;:!?")):]
    return "".join(parts)


def fraction_for_jaccard(target: float, n: int = 5) -> float:
    """Share of words to replace so that about `target` of the n-gram set survives (each change breaks n n-grams)."""
    return 1.0 - (2 * target / (1 + target)) ** (1 / n)


def foreign_page(lang: str, rng: random.Random, sentences: int = 12) -> str:
    vocab = FOREIGN_WORDS[lang]
    return " ".join(" ".join(rng.choice(vocab) for _ in range(rng.randint(8, 16))).capitalize() + "."
                    for _ in range(sentences))


def spam_page(rng: random.Random) -> str:
    line = "BUY CHEAP PILLS NOW ### best price ### click here"
    return "\n".join([line] * 40)


def _html(text: str) -> bytes:
    paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n"))
    return (f"<html><head><title>page</title></head><body><nav>Home | About</nav>"
            f"<article>{paragraphs}</article></body></html>").encode()


def _record(rid: str, url: str, body: bytes, ctype: str = "text/html; charset=utf-8", kind: str = "response") -> bytes:
    if kind == "response":
        block = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        warc_ctype = "application/http; msgtype=response"
    else:
        block, warc_ctype = body, "text/plain"
    head = (f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Record-ID: {rid}\r\nWARC-Target-URI: {url}\r\n"
            f"WARC-Date: 2024-01-01T00:00:00Z\r\nContent-Type: {warc_ctype}\r\nContent-Length: {len(block)}\r\n\r\n")
    return gzip.compress(head.encode() + block + b"\r\n\r\n", mtime=0)


def write_crawl(out_dir: str, files: int = 4, pages: int = 200, seed: int = 0, truncate_last: bool = True,
                near_levels=(0.97, 0.93, 0.88, 0.84, 0.6, 0.4, 0.2)) -> Truth:
    """Write `files` .warc.gz files with about `pages` English originals in all, plus the plant."""
    rng = random.Random(seed)
    english = english_pages(pages)
    rng.shuffle(english)
    truth = Truth()
    records: list[tuple[str, bytes]] = []

    def rid() -> str:
        return f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128))}>"

    def add_html(text: str) -> str:
        r = rid()
        records.append((r, _record(r, f"http://example.com/{r[10:18]}", _html(text))))
        return r

    originals = [(add_html(t), t) for t in english[:pages]]
    truth.english = [r for r, _ in originals]
    for i, (orig, text) in enumerate(originals[: pages // 10]):
        truth.exact_pairs.append((orig, add_html(text)))
    for i, (orig, text) in enumerate(originals[pages // 10: pages // 10 + pages // 4]):
        level = near_levels[i % len(near_levels)]
        copy = mutate(text, fraction_for_jaccard(level), rng)
        truth.near_pairs.append((orig, add_html(copy), jaccard(text, copy)))
    for i in range(max(3, pages // 20)):
        lang = list(FOREIGN_WORDS)[i % len(FOREIGN_WORDS)]
        truth.foreign[add_html(foreign_page(lang, rng))] = lang
    for _ in range(max(2, pages // 50)):
        truth.spam.append(add_html(spam_page(rng)))
    broken = [("binary", b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)), "image/png", "response"),
              ("not html", b"%PDF-1.4 some pdf bytes", "application/pdf", "response"),
              ("invalid utf-8", b"caf\xe9 \xff\xfe broken text " * 20, "", "conversion"),
              ("empty", b"", "text/html", "response")]
    for kind, body, ctype, rtype in broken:
        r = rid()
        records.append((r, _record(r, f"http://example.com/broken/{kind}", body, ctype, rtype)))
        truth.broken[r] = kind

    rng.shuffle(records)
    os.makedirs(out_dir, exist_ok=True)
    per_file = -(-len(records) // files)
    for f in range(files):
        path = os.path.join(out_dir, f"crawl-{f:03d}.warc.gz")
        data = b"".join(blob for _, blob in records[f * per_file:(f + 1) * per_file])
        if truncate_last and f == files - 1:
            data = data[: len(data) - len(records[-1][1]) // 2]  # cut the last record in half
            truth.truncated_files.append(path)
        with open(path, "wb") as fh:
            fh.write(data)
    return truth
