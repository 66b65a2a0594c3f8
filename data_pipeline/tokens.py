"""The tokenizer stage: the run's tokenizer, given or trained on a bounded, seeded sample of the kept text.

A given tokenizer.json or GPT-2 directory (vocab.json + merges.txt) is saved once as
output.dir/tokenizer.json, so the tokenize workers, mixture.json and the
trainer's checks all read one file. Otherwise a byte-level BPE trains on at most
`tokenize.train_sample_bytes` of the kept text: BPE's merges come from pair counts, which a
few hundred MB of a crawl estimate as well as the whole of it, at a fixed cost.

The sample is the run of documents in sample_key order that fits the budget. So that the
tokenizer reduce need not read the whole corpus to find it, the dedup reduce bounds its keys
from the survivors' sizes (sample_bound, with a margin for what decontamination cuts), and
each finalize task sets aside its documents under the bound. When those candidates hold more
than the budget, the sample lies among them and is the same; otherwise every document is read.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Iterable, Optional

import numpy as np

from data_pipeline.io import atomic_path


def sample_key(seed: int, doc_id: str) -> int:
    """A document's place in the sample order: a hash of (seed, id), so independent of shard order."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest(), "big")


# The candidates' bytes the bound aims at, as a multiple of the budget: decontamination may cut the survivors.
SAMPLE_MARGIN = 1.25


def sample_bound(shards: Iterable[tuple[list[str], list[int]]], budget: int, seed: int) -> Optional[int]:
    """A sample key below which the documents (ids and UTF-8 sizes, shard by shard) hold SAMPLE_MARGIN x budget
    bytes: the documents under it include the training sample. None when all of them hold less (read them all).
    Holds only the documents under the running bound, never the corpus's keys."""
    want = SAMPLE_MARGIN * budget
    keys, sizes, bound = np.empty(0, np.uint64), np.empty(0, np.int64), None
    for ids, nbytes in shards:
        new = np.fromiter((sample_key(seed, i) for i in ids), np.uint64, len(ids))
        keys, sizes = np.concatenate([keys, new]), np.concatenate([sizes, np.asarray(nbytes, np.int64)])
        if bound is not None:
            under = keys < bound
            keys, sizes = keys[under], sizes[under]
        if sizes.sum() > want:
            order = np.argsort(keys, kind="stable")
            keys, sizes = keys[order], sizes[order]
            cut = int(np.searchsorted(np.cumsum(sizes), want, side="right")) + 1  # the prefix that passes want
            if cut < len(keys):  # else all of them are needed, under the bound there was
                bound, keys, sizes = int(keys[cut]), keys[:cut], sizes[:cut]
    return bound


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
