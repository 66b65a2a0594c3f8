"""Exact and MinHash fuzzy deduplication, staged so each step can run on its own shards.

    per shard:  content hash + MinHash signature of every kept document
    reduce:     exact duplicates by hash; LSH band buckets -> candidate pairs ->
                verified pairs -> clusters (union-find); keep the first document of each

MinHash is datasketch's; band bucketing and union-find are written out because
datasketch's MinHashLSH is an in-memory index that cannot be built shard by shard.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from functools import lru_cache
from typing import Iterable, Optional

import numpy as np

from data_pipeline.config import DedupConfig

_PUNCT = re.compile(r"[^\w\s]")


# ASCII characters that are neither \w nor whitespace: what _PUNCT replaces, as a str.translate table.
_ASCII_PUNCT = str.maketrans({c: " " for c in range(128)
                              if not (chr(c).isalnum() or chr(c) == "_" or chr(c).isspace())})


def normalize(text: str) -> list[str]:
    """Lower-cased words without punctuation (FineWeb's MinHash normalisation)."""
    low = text.lower()
    if low.isascii():  # most pages: translate is 1.7x faster than the regex, with the same result
        return low.translate(_ASCII_PUNCT).split()
    return _PUNCT.sub(" ", low).split()


def content_hash(text: str) -> str:
    return hashlib.sha1(" ".join(text.split()).encode()).hexdigest()


def shingles(words: list[str], n: int) -> set[bytes]:
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


_MASK32 = np.uint64(0xFFFFFFFF)
_MIX = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1, 0xD3A2646C, 0xFD7046C5, 0xB55A4F09],
                dtype=np.uint64)


class _WordHashes(dict):
    """word -> CRC32, filled on first sight (a dict lookup in C; lru_cache's wrapper cost 1.7x more)."""

    def __missing__(self, word: str) -> int:
        if len(self) > 1 << 21:  # bound the memory of a long-running worker
            self.clear()
        value = self[word] = zlib.crc32(word.encode())
        return value


_word_hashes = _WordHashes()


def shingle_hashes(words: list[str], n: int) -> np.ndarray:
    """32-bit hashes of the word n-grams, computed from per-word CRCs in one vectorised pass.

    Hashing each n-gram string in Python (datasketch's default, sha1 per item) was 80% of
    the cost of a signature; word CRCs are cached and combined here instead. Repeated
    n-grams are left in: they cannot change a minimum.
    """
    h = np.fromiter(map(_word_hashes.__getitem__, words), dtype=np.uint64, count=len(words))
    if len(h) < n:
        h = np.concatenate([h, np.zeros(n - len(h), np.uint64)])
    span = len(h) - n + 1
    out = h[:span] * _MIX[0]
    for k in range(1, n):
        out ^= h[k:k + span] * _MIX[k]
    return (out ^ (out >> np.uint64(29))) & _MASK32


@lru_cache(maxsize=4)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def signature(text: str, cfg: DedupConfig) -> np.ndarray:
    """datasketch's MinHash (scheme affine32: its permutations, its fmix pre-mix) of the word n-grams.

    The permutations are applied to all n-gram hashes in one numpy expression: datasketch's
    update_batch first passes every item through a Python-level hash function, 2.4x slower.
    tests/unit/test_dedup.py checks the values equal update_batch's.
    """
    from datasketch.minhash import _fmix

    a, b = _permutations(cfg.num_perm, cfg.seed)
    hv = _fmix(shingle_hashes(normalize(text), cfg.ngram).astype(np.uint32), 32)
    # uint32 arithmetic wraps as datasketch's affine32 does, and the values fit: stored in 4 bytes, not 8 (the
    # dedup reduce holds every document's signature at once)
    return (np.multiply.outer(hv, a) + b).min(axis=0)


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = shingles(normalize(a), n), shingles(normalize(b), n)
    return len(sa & sb) / len(sa | sb)


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller index (earlier document) becomes the root, the one we keep
            self.parent[max(ra, rb)] = min(ra, rb)


def find_duplicates(ids: list[str], hashes: list[str], signatures: np.ndarray, cfg: DedupConfig,
                    record_ids: Optional[list] = None, urls: Optional[list] = None) -> dict[str, dict]:
    """{dropped id: drop record} over documents in corpus order; each drop names its cluster's kept document.

    A drop record: stage, reason, `duplicate_of` (the kept document's id, and its record_id and
    url when given), `similarity` (the share of agreeing MinHash values between the two
    signatures, an estimate of their 5-gram Jaccard similarity; 1.0 for an exact copy of the
    kept page). `duplicate_of` is always a kept document: an exact copy of a page that is itself
    a near duplicate points at the page its cluster keeps, and names that page in `copy_of`.
    Clusters chain, so a near duplicate can be less similar to the kept document than
    verify_threshold: then `matched` names the member it was verified against (its closest)
    and their similarity, the pair that put it in the cluster.
    """
    first_by_hash: dict[str, int] = {}
    unique = []
    for i, h in enumerate(hashes):
        if first_by_hash.setdefault(h, i) == i:
            unique.append(i)
    uf = UnionFind(len(ids))
    best: dict[int, tuple[float, int]] = {}  # document -> (similarity, member) of its closest verified pair
    for a, b in _candidate_pairs(signatures, unique, cfg):
        similarity = _estimated_jaccard(signatures[a], signatures[b])
        if similarity >= cfg.verify_threshold:
            uf.union(a, b)
            for x, y in ((a, b), (b, a)):
                if similarity > best.get(x, (-1.0, 0))[0]:
                    best[x] = (similarity, y)
    dropped: dict[str, dict] = {}
    for i, h in enumerate(hashes):
        first = first_by_hash[h]
        kept = uf.find(first)
        if first == i == kept:
            continue
        record = {"stage": "exact-dedup", "reason": "exact duplicate"} if first != i else \
            {"stage": "fuzzy-dedup", "reason": "near duplicate"}
        record["duplicate_of"] = ids[kept]
        if record_ids is not None:
            record["duplicate_of_record_id"] = record_ids[kept]
        if urls is not None:
            record["duplicate_of_url"] = urls[kept]
        similarity = _estimated_jaccard(signatures[i], signatures[kept])
        record["similarity"] = round(similarity, 4)
        if first != i and first != kept:
            record["copy_of"] = ids[first]
        elif first == i and similarity < cfg.verify_threshold:
            record["matched"] = {"id": ids[best[i][1]], "similarity": round(best[i][0], 4)}
        dropped[ids[i]] = record
    return dropped


def _candidate_pairs(signatures: np.ndarray, rows: Iterable[int], cfg: DedupConfig) -> Iterable[tuple[int, int]]:
    rows = list(rows)
    for band in range(cfg.bands):
        part = signatures[rows, band * cfg.rows:(band + 1) * cfg.rows]
        buckets: dict[bytes, int] = {}
        for row, key in zip(rows, map(bytes, part)):
            first: Optional[int] = buckets.setdefault(key, row)
            if first != row:
                yield first, row


def _estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))
