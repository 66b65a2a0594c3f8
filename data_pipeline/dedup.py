"""Exact and MinHash fuzzy deduplication, staged so each step can run on its own shards.

    per shard:        content hash + MinHash signature of every kept document
    per slot range:   exact copies by hash (exact_copies); per band, LSH buckets -> candidate pairs ->
                      pairs verified on whole signatures (band_pairs)
    once:             clusters (connected components) of the verified pairs; keep the first document of each

MinHash is datasketch's; the rest is written out on numpy sorts because datasketch's MinHashLSH is
an in-memory index of Python objects (about 2 KB a document with ids) that cannot be built shard by
shard nor split across machines. data_pipeline.dedup_tasks runs these steps as a corpus run's tasks.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np

from data_pipeline.config import DedupConfig
from megagpt.errors import DataError

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


# Pairs verified per gather: two (chunk, num_perm) uint32 blocks, 59 MB at 112 permutations.
_PAIR_CHUNK = 1 << 16


class SignatureArray:
    """Signatures held in memory, one row a document."""

    def __init__(self, signatures: np.ndarray):
        self.signatures = signatures

    def rows(self, index: np.ndarray) -> np.ndarray:
        return self.signatures[index]


class SignatureFiles:
    """The signatures of a run's shards, left in their `.sig.npy` files (rows in corpus order).

    Rows are read where they lie: a few from a shard by pread, many through a memory map made
    from the header read once (np.load's own parse cost 126 us a shard, and the pairs of a chunk
    touch nearly every shard of a large run).
    """

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self.heads = [_npy_head(p) for p in self.paths]  # (data offset, shape, dtype)
        self.offsets = np.concatenate([[0], np.cumsum([shape[0] for _, shape, _ in self.heads], dtype=np.int64)])

    def rows(self, index: np.ndarray) -> np.ndarray:
        order = np.argsort(index, kind="stable")
        ordered = index[order]
        cuts = np.searchsorted(ordered, self.offsets)
        out = None
        for shard in np.flatnonzero(np.diff(cuts)):
            lo, hi = cuts[shard], cuts[shard + 1]
            local = ordered[lo:hi] - self.offsets[shard]
            part = self._read(int(shard), local)
            if out is None:
                out = np.empty((len(index), part.shape[1]), part.dtype)
            out[order[lo:hi]] = part
        return out if out is not None else np.empty((0, 0), np.uint32)

    def _read(self, shard: int, local: np.ndarray) -> np.ndarray:
        offset, shape, dtype = self.heads[shard]
        if len(local) > 64:
            return np.memmap(self.paths[shard], dtype, "r", offset, shape)[local]
        width = shape[1] * dtype.itemsize
        fd = os.open(self.paths[shard], os.O_RDONLY)
        try:
            data = b"".join(os.pread(fd, width, offset + int(r) * width) for r in local)
        finally:
            os.close(fd)
        if len(data) != len(local) * width:
            raise DataError(f"{self.paths[shard]} is shorter than its header says ({shape[0]} signatures)")
        return np.frombuffer(data, dtype).reshape(len(local), shape[1])


def _npy_head(path: str) -> tuple[int, tuple, np.dtype]:
    """A .npy file's data offset, shape and dtype."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran or len(shape) != 2:
            raise DataError(f"{path} is not a signature file (shape {shape}{', Fortran order' if fortran else ''})")
        return f.tell(), shape, dtype


# Slots a shard's hash keys and band rows are grouped by (data_pipeline.dedup_tasks): a dedup task takes a range of
# them, so the most tasks a band or the exact copies can be split across.
SLOTS = 256


def key_slots(keys: np.ndarray) -> np.ndarray:
    """The slot of each content-hash key: its top byte (sha1 bits are uniform)."""
    return (keys[:, 0] >> np.uint64(56)).astype(np.intp)


def band_slots(columns: np.ndarray) -> np.ndarray:
    """The slot of each band row: the top byte of its first value times a 32-bit golden-ratio constant. A minimum
    of many hashes is small, so its own top byte is nearly always 0; the product spreads the values evenly."""
    mixed = (columns[:, 0].astype(np.uint64) * np.uint64(0x9E3779B1)) & _MASK32
    return (mixed >> np.uint64(24)).astype(np.intp)


def part_slots(part: int, parts: int) -> tuple[int, int]:
    """The slots [lo, hi) that task `part` of `parts` takes."""
    return part * SLOTS // parts, (part + 1) * SLOTS // parts


@dataclass
class Drops:
    """The documents dedup drops, as arrays over their rows (corpus order), ascending."""

    row: np.ndarray
    kept: np.ndarray  # the row its cluster keeps: always the cluster's first, so before it
    exact: np.ndarray  # an exact copy of an earlier row (else a near duplicate)
    copy_of: np.ndarray  # an exact copy of a page that is itself dropped: that page's row; else -1
    similarity: np.ndarray  # the share of MinHash values it agrees on with kept
    matched: np.ndarray  # a near duplicate less similar to kept than verify_threshold: its closest verified member
    matched_similarity: np.ndarray  # (the pair that put it in the cluster); else -1 and nan

    def referenced(self) -> np.ndarray:
        """The other rows the drop records name."""
        return np.unique(np.concatenate([self.kept, self.copy_of[self.copy_of >= 0], self.matched[self.matched >= 0]]))


# The verified pairs of a band, as a band task saves them.
PAIR = np.dtype([("a", np.int64), ("b", np.int64), ("agree", np.float64)])


def find_duplicate_rows(keys: np.ndarray, signatures: np.ndarray, cfg: DedupConfig) -> Drops:
    """Exact and near duplicates over documents held in memory, in corpus order; the first of each cluster is kept.

    keys: (documents, words) uint64, equal for documents with equal content hashes. The steps are the
    ones a corpus run spreads over tasks (data_pipeline.dedup_tasks), here each over the whole corpus.
    """
    rows = np.arange(len(keys))
    copies = exact_copies(keys, rows)
    held = SignatureArray(signatures)
    unique = np.ones(len(keys), bool)
    unique[copies[:, 0]] = False
    bands = [band_pairs(signatures[unique, b * cfg.rows:(b + 1) * cfg.rows], rows[unique], held, cfg)
             for b in range(cfg.bands)]
    return find_drops(copies, first_meetings(np.concatenate(bands)), held, cfg)


def exact_copies(keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(row, first) of each row whose key an earlier row has, first being the earliest such row; sorted by row.

    rows: ascending, the documents' rows in the corpus (one task's share of the keys)."""
    first = rows[_first_of_equal(keys)]
    copy = first != rows
    return np.column_stack([rows[copy], first[copy]]).astype(np.int64).reshape(-1, 2)


def is_in(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """values' membership of a sorted array, by binary search (np.isin sorts both)."""
    if not len(sorted_set):
        return np.zeros(len(values), bool)
    at = np.searchsorted(sorted_set, values).clip(max=len(sorted_set) - 1)
    return sorted_set[at] == values


def band_pairs(columns: np.ndarray, rows: np.ndarray, signatures, cfg: DedupConfig) -> np.ndarray:
    """The verified candidate pairs of one band (or of a slot range of it), as PAIR records ordered by b.

    columns: the band's MinHash values of `rows`, ascending and without the exact copies (their first
    row stands for them). Rows with equal values share a bucket; its first row pairs with every other,
    and a pair is kept when the whole signatures agree on verify_threshold.
    """
    order, starts = _runs_of_equal(columns)
    others = np.flatnonzero(~starts)
    bucket_first = rows[order[np.flatnonzero(starts)]]
    a, b = bucket_first[(np.cumsum(starts) - 1)[others]], rows[order[others]]
    by_b = np.argsort(b, kind="stable")
    a, b = a[by_b], b[by_b]
    agree = _agreement(signatures, a, b)
    ok = agree >= cfg.verify_threshold
    out = np.empty(int(ok.sum()), PAIR)
    out["a"], out["b"], out["agree"] = a[ok], b[ok], agree[ok]
    return out


def first_meetings(pairs: np.ndarray) -> np.ndarray:
    """Each verified pair once, where the first band met it, from the pairs in the order the bands meet them (band
    by band, each band's pairs by b): that order decides which of two equally close members a drop names as
    `matched`. A pair is verified on whole signatures, so every band that meets it agrees on it."""
    if not len(pairs):
        return pairs
    order, starts = _runs_of_equal(np.column_stack([pairs["a"], pairs["b"]]))
    return pairs[np.sort(order[starts])]  # stable: a run's first member is the earliest meeting


def _first_of_equal(keys: np.ndarray) -> np.ndarray:
    """Each row's first row with the same key."""
    order, starts = _runs_of_equal(keys)
    first = np.empty(len(keys), np.int64)
    first[order] = order[np.flatnonzero(starts)][np.cumsum(starts) - 1]
    return first


def _runs_of_equal(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A stable order of the rows of a 2-D array that puts equal rows together, and where each run starts.

    Each row is sorted as one opaque value (a void view, compared as bytes): a lexsort over the
    columns copied every column and compared them one by one."""
    whole = np.ascontiguousarray(values).view(np.dtype((np.void, values.shape[1] * values.itemsize))).ravel()
    order = np.argsort(whole, kind="stable")
    starts = np.ones(len(whole), bool)
    for lo in range(0, len(whole) - 1, _RUN_CHUNK):  # neighbours compared a chunk at a time: no sorted copy
        ordered = whole[order[lo:lo + _RUN_CHUNK + 1]]
        starts[lo + 1:lo + len(ordered)] = ordered[1:] != ordered[:-1]
    return order, starts


# Sorted rows compared per step of _runs_of_equal.
_RUN_CHUNK = 1 << 20


def _agreement(signatures, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The share of MinHash values rows a and b agree on, pair by pair: an estimate of their Jaccard similarity."""
    out = np.empty(len(a))
    for lo in range(0, len(a), _PAIR_CHUNK):
        sa, sb = signatures.rows(a[lo:lo + _PAIR_CHUNK]), signatures.rows(b[lo:lo + _PAIR_CHUNK])
        out[lo:lo + _PAIR_CHUNK] = (sa == sb).sum(axis=1) / sa.shape[1]
    return out


def find_drops(copies: np.ndarray, pairs: np.ndarray, signatures, cfg: DedupConfig) -> Drops:
    """The drops from the exact copies ((row, first), sorted by row) and the verified pairs (first_meetings).

    Clusters are the connected components of the pairs, each kept by its smallest row. Memory follows the
    copies and the rows in pairs, not the corpus."""
    a, b = pairs["a"], pairs["b"]
    member, root = _cluster_roots(a, b)
    near = root != member
    copy_rows, copy_first = copies[:, 0], copies[:, 1]
    copy_kept = copy_first.copy()  # an exact copy goes with its first row's cluster
    if len(member):
        at = np.searchsorted(member, copy_first).clip(max=len(member) - 1)
        hit = member[at] == copy_first
        copy_kept[hit] = root[at[hit]]
    drop = np.concatenate([member[near], copy_rows])
    kept = np.concatenate([root[near], copy_kept])
    first = np.concatenate([member[near], copy_first])
    order = np.argsort(drop, kind="stable")  # copies are never in pairs: the two sets are disjoint
    drop, kept, first = drop[order], kept[order], first[order]
    exact = first != drop
    similarity = _agreement(signatures, drop, kept)
    copy_of = np.where(exact & (first != kept), first, -1)
    matched = np.full(len(drop), -1, np.int64)
    matched_similarity = np.full(len(drop), np.nan)
    loose = np.flatnonzero(~exact & (similarity < cfg.verify_threshold))
    if len(loose):
        matched[loose], matched_similarity[loose] = _closest_verified(a, b, pairs["agree"], drop[loose])
    return Drops(drop, kept, exact, copy_of, similarity, matched, matched_similarity)


def _cluster_roots(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows in pairs (ascending) and each one's cluster's smallest row, clusters being the connected
    components of the pairs (over those rows alone: a row in no pair is its own cluster)."""
    member = np.unique(np.concatenate([a, b]))
    if not len(member):
        return member, member
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = len(member)
    graph = coo_matrix((np.ones(len(a), np.int8), (np.searchsorted(member, a), np.searchsorted(member, b))),
                       shape=(m, m))
    _, label = connected_components(graph, directed=False)
    labels, smallest = np.unique(label, return_index=True)  # the first occurrence of a label is its smallest row
    root = np.empty(labels.max() + 1, np.int64)
    root[labels] = member[smallest]
    return member, root[label]


def _closest_verified(a: np.ndarray, b: np.ndarray, agree: np.ndarray, rows: np.ndarray):
    """For each row, its most similar verified partner (the first pair met among equals) and their agreement."""
    x, y = np.concatenate([a, b]), np.concatenate([b, a])
    s, met = np.concatenate([agree, agree]), np.concatenate([np.arange(len(a))] * 2)
    order = np.lexsort((met, -s, x))
    heads = order[np.flatnonzero(np.r_[True, x[order][1:] != x[order][:-1]])]
    at = np.searchsorted(x[heads], rows)
    return y[heads][at], s[heads][at]


def drop_record(drops: Drops, k: int, name) -> dict:
    """Drop k's record; name(row) gives a row's {"id": ...}, with "record_id" and "url" where the run keeps them.

    A record: stage, reason, `duplicate_of` (the kept document's id, and its record_id and url
    when known), `similarity` (the share of agreeing MinHash values between the two
    signatures, an estimate of their 5-gram Jaccard similarity; 1.0 for an exact copy of the
    kept page). `duplicate_of` is always a kept document: an exact copy of a page that is itself
    a near duplicate points at the page its cluster keeps, and names that page in `copy_of`.
    Clusters chain, so a near duplicate can be less similar to the kept document than
    verify_threshold: then `matched` names the member it was verified against (its closest)
    and their similarity, the pair that put it in the cluster.
    """
    record = {"stage": "exact-dedup", "reason": "exact duplicate"} if drops.exact[k] else \
        {"stage": "fuzzy-dedup", "reason": "near duplicate"}
    record.update({f"duplicate_of{'' if field == 'id' else '_' + field}": value
                   for field, value in name(int(drops.kept[k])).items()})
    record["similarity"] = round(float(drops.similarity[k]), 4)
    if drops.copy_of[k] >= 0:
        record["copy_of"] = name(int(drops.copy_of[k]))["id"]
    elif drops.matched[k] >= 0:
        record["matched"] = {"id": name(int(drops.matched[k]))["id"],
                             "similarity": round(float(drops.matched_similarity[k]), 4)}
    return record


def find_duplicates(ids: list[str], hashes: list[str], signatures: np.ndarray, cfg: DedupConfig,
                    record_ids: Optional[list] = None, urls: Optional[list] = None) -> dict[str, dict]:
    """{dropped id: drop record} over documents held in memory, in corpus order (see drop_record)."""
    _, keys = np.unique(np.array(hashes), return_inverse=True)
    drops = find_duplicate_rows(keys.reshape(-1, 1).astype(np.uint64), signatures, cfg)
    fields = {"record_id": record_ids, "url": urls}

    def name(row: int) -> dict:
        return {"id": ids[row], **{field: values[row] for field, values in fields.items() if values is not None}}

    return {ids[row]: drop_record(drops, k, name) for k, row in enumerate(drops.row.tolist())}
