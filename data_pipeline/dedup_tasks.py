"""The dedup reduce as a corpus run's tasks, so that no process holds the whole corpus (datatrove's bucket
workers split it the same way):

    dedup-index  (per shard)        work/dedup/index/<shard>.{keys,bands,slots}.npy: the shard's content-hash keys
                                    and each band's MinHash values with their rows, grouped by slot
                                    (dedup.key_slots, dedup.band_slots)
    dedup-exact  (per part)         work/dedup/exact/<task>.npy: (row, first) of the exact copies among the keys
                                    in the part's slots
    dedup-bands  (per band, part)   work/dedup/pairs/<task>.npy: the band's verified pairs among the rows whose
                                    values lie in the part's slots, exact copies left out
    dedup        (reduce)           clusters of all the pairs; each shard's drops (data_pipeline.pipeline);
                                    then the tasks' outputs above are removed (clean)

A task reads its slots' slice of every shard's index, so it holds 1/parts of the corpus's keys or of
one band's rows. Equal keys and equal band values share a slot, so the parts' results together are
the whole corpus's. `executor.dedup_parts` sets the parts and is part of each task's name: a run
resumed with another value does these tasks again rather than mixing two splits, and the drops are
the same for every value (tests/unit/test_dedup.py).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from data_pipeline.dedup import (PAIR, SLOTS, SignatureFiles, band_pairs, band_slots, exact_copies,
                                 first_meetings, is_in, key_slots, part_slots)
from data_pipeline.io import atomic_path
from megagpt.errors import ConfigError, DataError

_TASK = re.compile(r"(?:b(\d+))?p(\d+)of(\d+)$")


def tasks(cfg, stage: str) -> list[str]:
    """The task names of dedup-exact (p000of004, ...) or dedup-bands (b00p000of004, ...)."""
    parts = cfg.executor.dedup_parts
    names = [f"p{p:03d}of{parts:03d}" for p in range(parts)]
    if stage == "dedup-exact":
        return names
    return [f"b{b:02d}{name}" for b in range(cfg.dedup.bands) for name in names]


def run_task(cfg, stage: str, task: str, names: list[str]) -> None:
    """One dedup-exact or dedup-bands task over the shards `names` (their index written)."""
    match = _TASK.match(task)
    if not match or task not in tasks(cfg, stage):
        raise ConfigError(f"{task!r} is not a {stage} task of this run (executor.dedup_parts="
                          f"{cfg.executor.dedup_parts})")
    band, part, parts = (None if match[1] is None else int(match[1])), int(match[2]), int(match[3])
    lo, hi = part_slots(part, parts)
    if stage == "dedup-exact":
        _save(exact_path(cfg, task), exact_copies(*_slices(cfg, names, 0, lo, hi)))
        return
    copies = [exact_path(cfg, t) for t in tasks(cfg, "dedup-exact")]
    _save(pairs_path(cfg, task), band_pairs(*_slices(cfg, names, band + 1, lo, hi, leave_out=copies),
                                            signature_files(cfg, names), cfg.dedup))


def write_index(cfg, name: str) -> None:
    """Shard `name`'s index: its keys ((documents, 3) uint64: two key words and the row), each band's values
    ((bands, documents, rows + 1) uint32: the values and the row), each grouped by slot, and where each slot
    starts ((bands + 1, SLOTS + 1) int64: the keys' first)."""
    work = os.path.join(cfg.output.dir, "work", "process")
    with open(os.path.join(work, f"{name}.hashes.json")) as f:
        keys = hash_keys(json.load(f)["hashes"])
    signatures = np.load(os.path.join(work, f"{name}.sig.npy"))
    if len(keys) != len(signatures):  # rows are matched to documents by position: a mismatch drops the wrong pages
        raise DataError(f"{work}/{name}.sig.npy has {len(signatures)} signatures for the {len(keys)} documents of "
                        f"{name}.hashes.json: rerun the process stage of shard {name}")
    d, n = cfg.dedup, len(keys)
    starts = np.empty((d.bands + 1, SLOTS + 1), np.int64)
    order, starts[0] = _by_slot(key_slots(keys))
    keyed = np.column_stack([keys[order], order.astype(np.uint64)])
    bands = np.empty((d.bands, n, d.rows + 1), np.uint32)
    for b in range(d.bands):
        columns = signatures[:, b * d.rows:(b + 1) * d.rows].astype(np.uint32)  # values < 2**32 (affine32)
        order, starts[b + 1] = _by_slot(band_slots(columns))
        bands[b, :, :-1], bands[b, :, -1] = columns[order], order
    prefix = index_prefix(cfg, name)
    for ext, array in ((".keys.npy", keyed), (".bands.npy", bands), (".slots.npy", starts)):
        _save(prefix + ext, array)


def index_prefix(cfg, name: str) -> str:
    return os.path.join(cfg.output.dir, "work", "dedup", "index", name)


def exact_path(cfg, task: str) -> str:
    return os.path.join(cfg.output.dir, "work", "dedup", "exact", f"{task}.npy")


def pairs_path(cfg, task: str) -> str:
    return os.path.join(cfg.output.dir, "work", "dedup", "pairs", f"{task}.npy")


def signature_files(cfg, names: list[str]) -> SignatureFiles:
    return SignatureFiles([os.path.join(cfg.output.dir, "work", "process", f"{n}.sig.npy") for n in names])


def copies(cfg) -> np.ndarray:
    """(row, first) of every exact copy, sorted by row: the dedup-exact tasks' outputs together."""
    found = np.concatenate([np.empty((0, 2), np.int64)] + [np.load(exact_path(cfg, t))
                                                           for t in tasks(cfg, "dedup-exact")])
    return found[np.argsort(found[:, 0], kind="stable")]


def verified_pairs(cfg) -> np.ndarray:
    """The dedup-bands tasks' pairs, in the order the bands meet them, each pair once (dedup.first_meetings)."""
    names, bands = tasks(cfg, "dedup-bands"), []
    for b in range(cfg.dedup.bands):  # a band's parts hold disjoint rows: together, its pairs ordered by b
        pairs = np.concatenate([np.empty(0, PAIR)] + [np.load(pairs_path(cfg, t)) for t in names
                                                      if t.startswith(f"b{b:02d}p")])
        bands.append(pairs[np.argsort(pairs["b"], kind="stable")])
    pairs = np.concatenate([np.empty(0, PAIR)] + bands)
    del bands
    return first_meetings(pairs)


def clean(cfg) -> None:
    """Remove the dedup tasks' outputs and markers once the reduce is done: nothing reads them after it, and the
    index alone is about the size of the signatures. A run --extend'ed later indexes every shard again."""
    import shutil

    from data_pipeline.executors import clear_done

    for stage, folder in (("dedup-index", "index"), ("dedup-exact", "exact"), ("dedup-bands", "pairs")):
        shutil.rmtree(os.path.join(cfg.output.dir, "work", "dedup", folder), ignore_errors=True)
        clear_done(cfg.output.dir, stage)


def hash_keys(hashes: list[str]) -> np.ndarray:
    """The first 128 bits of each hex content hash, as two uint64 words."""
    return np.array([(int(h[:16], 16), int(h[16:32], 16)) for h in hashes], np.uint64).reshape(-1, 2)


def _by_slot(slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows grouped by slot (in row order within one) and where each slot starts."""
    order = np.argsort(slots, kind="stable")
    return order, np.searchsorted(slots[order], np.arange(SLOTS + 1))


def _slices(cfg, names: list[str], what: int, lo: int, hi: int, leave_out: list[str] = ()
            ) -> tuple[np.ndarray, np.ndarray]:
    """Slots [lo, hi) of every shard's keys (what=0) or of band what-1: the values and their rows in the corpus,
    ascending, without the exact copies that the dedup-exact outputs `leave_out` name. Filled into arrays sized
    for every row of the slice: the pages of rows left out are never touched, so never resident."""
    spans = []  # per shard: where the slice starts and ends, and the shard's rows (not its whole slot table)
    for n in names:
        s = np.load(index_prefix(cfg, n) + ".slots.npy")
        spans.append((int(s[what, lo]), int(s[what, hi]), int(s[0, -1])))
    total = sum(z - a for a, z, _ in spans)
    width, dtype = (2, np.uint64) if what == 0 else (cfg.dedup.rows, np.uint32)
    values, rows = np.empty((total, width), dtype), np.empty(total, np.int64)
    copies = _CopyRows(leave_out, np.cumsum([0] + [count for _, _, count in spans]))
    filled, offset = 0, 0
    for i, (n, (a, z, count)) in enumerate(zip(names, spans)):
        if z > a:
            index = np.load(index_prefix(cfg, n) + (".keys.npy" if what == 0 else ".bands.npy"), mmap_mode="r")
            part = np.array(index[a:z] if what == 0 else index[what - 1, a:z])
            local = part[:, -1].astype(np.int64) + offset
            order = np.argsort(local, kind="stable")  # a slot's rows ascend; a range of slots', not
            if leave_out:
                order = order[~is_in(local[order], copies.of_shard(i))]
            values[filled:filled + len(order)], rows[filled:filled + len(order)] = part[order, :-1], local[order]
            filled += len(order)
        offset += count
    return values[:filled], rows[:filled]


class _CopyRows:
    """The exact copies' rows a shard at a time, so that a band task never holds every copy: each dedup-exact
    output is sorted by row, so a shard's copies are one slice of each, found once per output."""

    def __init__(self, paths: list[str], shard_starts: np.ndarray):
        self.outputs = [np.load(p, mmap_mode="r") for p in paths]
        # one output's rows in memory at a time, for the search; then only where each shard's copies lie in it
        self.bounds = [np.searchsorted(np.ascontiguousarray(o[:, 0]), shard_starts) for o in self.outputs]

    def of_shard(self, i: int) -> np.ndarray:
        """Shard i's copies, as sorted corpus rows."""
        found = [o[b[i]:b[i + 1], 0] for o, b in zip(self.outputs, self.bounds) if b[i + 1] > b[i]]
        return np.sort(np.concatenate(found)) if found else np.empty(0, np.int64)


def _save(path: str, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
