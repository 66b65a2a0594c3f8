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
    keys, sizes, bound, settled = [], [], None, 0  # settled: how many entries the last cut left

    def cut():
        nonlocal keys, sizes, bound, settled
        k, n = np.concatenate(keys), np.concatenate(sizes)
        if bound is not None:
            k, n = k[k < bound], n[k < bound]
        if n.sum() > want:
            order = np.argsort(k, kind="stable")
            k, n = k[order], n[order]
            end = int(np.searchsorted(np.cumsum(n), want, side="right")) + 1  # the prefix that passes want
            if end < len(k):  # else all of them are needed, under the bound there was
                bound, k, n = int(k[end]), k[:end], n[:end]
        keys, sizes, settled = [k], [n], len(k)

    pending = 0
    for ids, nbytes in shards:
        keys.append(np.fromiter((sample_key(seed, i) for i in ids), np.uint64, len(ids)))
        sizes.append(np.asarray(nbytes, np.int64))
        pending += len(ids)
        if pending > max(settled, 1 << 16):  # cut when the entries have doubled: sorting per shard was quadratic
            cut()
            pending = 0
    cut()
    return bound


def training_sample(documents: Iterable[tuple[str, str]], budget: int, seed: int) -> list[str]:
    """The texts of the longest run of documents, in sample_key order, whose UTF-8 bytes fit the budget.

    documents: (id, text) pairs. The result keeps the documents' input order, so a corpus within
    the budget is returned whole and in order: the tokenizer trained on it is the one the whole
    corpus gives. Memory stays within the budget plus one document.
    """
    heap: list = []  # (-key, position, bytes, text): the largest key on top, evicted first
    total, ceiling = 0, None  # ceiling: the smallest key evicted; no document at or above it is in the run
    for position, (doc_id, text) in enumerate(documents):
        key = sample_key(seed, doc_id)
        if ceiling is not None and key >= ceiling:  # a small page past the run would fit the space left, but the
            continue                                # run ends where it was first over the budget
        size = len(text.encode("utf-8"))
        heapq.heappush(heap, (-key, position, size, text))
        total += size
        while total > budget or (heap and ceiling is not None and -heap[0][0] >= ceiling):
            evicted = heapq.heappop(heap)
            total -= evicted[2]
            ceiling = -evicted[0] if ceiling is None else min(ceiling, -evicted[0])
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
