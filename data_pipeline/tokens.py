"""The tokenizer stage: the run's tokenizer, given or trained on a bounded, seeded sample of the kept text.

A given tokenizer.json or GPT-2 directory (vocab.json + merges.txt) is saved once as
output.dir/tokenizer.json, so the tokenize workers, mixture.json and the
trainer's checks all read one file. Otherwise a byte-level BPE trains on at most
`tokenize.train_sample_bytes` of the kept text: BPE's merges come from pair counts, which a
few hundred MB of a crawl estimate as well as the whole of it, at a fixed cost.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Iterable

from data_pipeline.io import atomic_path


def sample_key(seed: int, doc_id: str) -> int:
    """A document's place in the sample order: a hash of (seed, id), so independent of shard order."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest(), "big")


def training_sample(documents: Iterable[tuple[str, str]], budget: int, seed: int) -> list[str]:
    """The texts of the longest run of documents, in sample_key order, whose UTF-8 bytes fit the budget.

    documents: (id, text) pairs. The result keeps the documents' input order, so a corpus within
    the budget is returned whole and in order: the tokenizer trained on it is the one the whole
    corpus gives. Memory stays within the budget plus one document.
    """
    heap: list = []  # (-key, position, bytes, text): the largest key on top, evicted first
    total = 0
    for position, (doc_id, text) in enumerate(documents):
        size = len(text.encode("utf-8"))
        heapq.heappush(heap, (-sample_key(seed, doc_id), position, size, text))
        total += size
        while total > budget:  # evicted documents never return: later ones only lengthen the prefix sums
            total -= heapq.heappop(heap)[2]
    return [text for _, _, _, text in sorted(heap, key=lambda item: item[1])]


def write_tokenizer(given: str | None, path: str, documents: Iterable[tuple[str, str]], vocab_size: int,
                    budget: int, seed: int) -> None:
    """The tokenizer the run tokenizes with, at `path`: the given one (a tokenizer.json or GPT-2's files) saved
    there, else a BPE trained on the documents."""
    from megagpt.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(given) if given else \
        Tokenizer.train(training_sample(documents, budget, seed), vocab_size)
    with atomic_path(path) as tmp:
        tokenizer.save(tmp)
