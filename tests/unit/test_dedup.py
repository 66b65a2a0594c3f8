"""Our vectorised MinHash gives datasketch's values exactly; the array dedup reduce gives the dict reduce's records."""

import os

import numpy as np
import pytest
from datasketch import MinHash

from data_pipeline.config import DedupConfig
from data_pipeline.dedup import normalize, shingle_hashes, signature


def test_signature_equals_datasketch_update_batch():
    cfg = DedupConfig()
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    texts = ["", "one", "a b c d", *(" ".join(rng.choice(words, size=n)) for n in (5, 6, 50, 400))]
    for text in texts:
        reference = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=int, scheme="affine32")
        reference.update_batch(shingle_hashes(normalize(text), cfg.ngram).tolist())
        ours = signature(text, cfg)
        assert reference.hashvalues.max() < 2 ** 32 and ours.dtype == np.uint32  # 4 bytes a value hold them all
        assert np.array_equal(ours, reference.hashvalues), text


def test_ascii_fast_path_normalizes_like_the_regex():
    from data_pipeline.dedup import _PUNCT

    every_ascii = "".join(chr(i) for i in range(128)) * 2 + " Hello, World! snake_case x-y 3.14 (a) [b]\t\x1cend"
    for text in (every_ascii, every_ascii + "é", "Ünïcode — words", ""):
        assert normalize(text) == _PUNCT.sub(" ", text.lower()).split()


def _reference_duplicates(ids, hashes, signatures, cfg, record_ids=None, urls=None):
    """The dedup reduce as first written, on Python dicts and a union-find: every signature held, a dict bucket
    per band. The array reduce must give its records exactly, ties included."""
    parent = list(range(len(ids)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_by_hash, unique = {}, []
    for i, h in enumerate(hashes):
        if first_by_hash.setdefault(h, i) == i:
            unique.append(i)
    best = {}
    for band in range(cfg.bands):
        buckets = {}
        for row in unique:
            first = buckets.setdefault(bytes(signatures[row, band * cfg.rows:(band + 1) * cfg.rows]), row)
            if first == row:
                continue
            similarity = float(np.mean(signatures[first] == signatures[row]))
            if similarity >= cfg.verify_threshold:
                ra, rb = find(first), find(row)
                parent[max(ra, rb)] = min(ra, rb)
                for x, y in ((first, row), (row, first)):
                    if similarity > best.get(x, (-1.0, 0))[0]:
                        best[x] = (similarity, y)
    dropped = {}
    for i, h in enumerate(hashes):
        first = first_by_hash[h]
        kept = find(first)
        if first == i == kept:
            continue
        record = {"stage": "exact-dedup", "reason": "exact duplicate"} if first != i else \
            {"stage": "fuzzy-dedup", "reason": "near duplicate"}
        record["duplicate_of"] = ids[kept]
        if record_ids is not None:
            record["duplicate_of_record_id"] = record_ids[kept]
        if urls is not None:
            record["duplicate_of_url"] = urls[kept]
        similarity = float(np.mean(signatures[i] == signatures[kept]))
        record["similarity"] = round(similarity, 4)
        if first != i and first != kept:
            record["copy_of"] = ids[first]
        elif first == i and similarity < cfg.verify_threshold:
            record["matched"] = {"id": ids[best[i][1]], "similarity": round(best[i][0], 4)}
        dropped[ids[i]] = record
    return dropped


def _planted_corpus(seed: int, cfg, documents: int = 400):
    """Clusters of near duplicates (a few values of a base changed, from a small alphabet so that similarities
    tie often), chains, exact copies of kept and of dropped pages, and loners; in a shuffled corpus order."""
    import hashlib

    rng = np.random.default_rng(seed)
    sigs, hashes = [], []
    while len(sigs) < documents:
        base = rng.integers(0, 6, cfg.num_perm, dtype=np.uint32)
        member = base
        for _ in range(rng.integers(1, 6)):
            if rng.random() < 0.3 and hashes:  # an exact copy of some earlier page
                k = int(rng.integers(len(sigs)))
                sigs.append(sigs[k]), hashes.append(hashes[k])
                continue
            member = member.copy()  # a chain: each member a few values from the one before
            flip = rng.choice(cfg.num_perm, int(rng.integers(0, cfg.num_perm // 2)), replace=False)
            member[flip] = rng.integers(0, 6, len(flip), dtype=np.uint32)
            sigs.append(member), hashes.append(hashlib.sha1(member.tobytes() + bytes([len(sigs) % 3])).hexdigest())
    order = rng.permutation(len(sigs))
    return np.stack(sigs)[order], [hashes[i] for i in order]


def _dedup_tasks(run, names: list[str]) -> None:
    """Every dedup task before the reduce, as a corpus run does them."""
    from data_pipeline import dedup_tasks

    for name in names:
        dedup_tasks.write_index(run, name)
    for stage in ("dedup-exact", "dedup-bands"):
        for task in dedup_tasks.tasks(run, stage):
            dedup_tasks.run_task(run, stage, task, names)


@pytest.mark.parametrize("chunk, parts", [(7, 1), (1 << 16, 1), (7, 3), (1 << 16, 16)],
                         ids=["pread", "memmap", "pread-3-parts", "memmap-16-parts"])
@pytest.mark.parametrize("seed", range(6))
def test_array_reduce_gives_the_reference_records_in_memory_and_from_shard_files(tmp_path, monkeypatch, seed, chunk,
                                                                                 parts):
    """Same drops, kept pages, similarities, copies and matched pairs (ties resolved the same way) as the dict
    reduce, whether the signatures are in memory or in shard files (empty shards among them), with pairs
    verified (and sorted neighbours compared) in chunks small enough that each shard's rows are read one by one,
    or large enough to be mapped,
    and the exact copies and each band split across 1, 3 or 16 tasks."""
    import json
    from types import SimpleNamespace

    from data_pipeline import dedup
    from data_pipeline.pipeline import _duplicates

    monkeypatch.setattr(dedup, "_PAIR_CHUNK", chunk)
    monkeypatch.setattr(dedup, "_RUN_CHUNK", chunk)  # sorted neighbours compared a few at a time, or all at once
    cfg = DedupConfig(num_perm=16, bands=4, rows=4, verify_threshold=0.5)
    sigs, hashes = _planted_corpus(seed, cfg)
    ids = [f"doc{i}" for i in range(len(sigs))]
    record_ids = [None if i % 5 == 0 else f"r{i}" for i in range(len(sigs))]
    urls = [f"https://x/{i}" for i in range(len(sigs))]
    expected = _reference_duplicates(ids, hashes, sigs, cfg, record_ids, urls)
    assert sum(r["stage"] == "exact-dedup" for r in expected.values()) > 20
    assert sum("matched" in r for r in expected.values()) > 2 and sum("copy_of" in r for r in expected.values()) > 2
    assert dedup.find_duplicates(ids, hashes, sigs, cfg, record_ids, urls) == expected
    assert dedup.find_duplicates(ids, hashes, sigs, cfg) == _reference_duplicates(ids, hashes, sigs, cfg)

    work = tmp_path / "work" / "process"
    work.mkdir(parents=True)
    cuts = [0, 0, 37, 37, 150, 151, 320, len(sigs)]  # shards of 0, 37, 0, 113, 1, 169 and the rest
    names = [f"{k:05d}" for k in range(len(cuts) - 1)]
    for name, lo, hi in zip(names, cuts, cuts[1:]):
        np.save(work / f"{name}.sig.npy", sigs[lo:hi])
        (work / f"{name}.hashes.json").write_text(json.dumps(
            {"ids": ids[lo:hi], "hashes": hashes[lo:hi], "record_ids": record_ids[lo:hi], "urls": urls[lo:hi]}))
    run = SimpleNamespace(output=SimpleNamespace(dir=str(tmp_path)), dedup=cfg,
                          executor=SimpleNamespace(dedup_parts=parts))
    _dedup_tasks(run, names)
    per_shard = list(_duplicates(run, names))
    assert per_shard == [{i: expected[i] for i in ids[lo:hi] if i in expected} for lo, hi in zip(cuts, cuts[1:])]
    assert len(os.listdir(tmp_path / "work" / "dedup" / "pairs")) == cfg.bands * parts


def test_slots_spread_minhash_values_evenly():
    """A MinHash value is a minimum, so mostly far below 2**32: its own top byte would put most rows of a
    band in slot 0 and one task. The slots of real signatures are even to within a few percent."""
    from data_pipeline.dedup import SLOTS, band_slots, key_slots, signature

    cfg = DedupConfig()
    rng = np.random.default_rng(0)
    words = [f"w{k}" for k in range(5000)]
    sigs = np.stack([signature(" ".join(rng.choice(words, 300)), cfg) for _ in range(4000)])
    assert (sigs[:, 0] >> 24 == 0).mean() > 0.6
    counts = np.bincount(band_slots(sigs[:, :cfg.rows]), minlength=SLOTS)
    assert counts.max() < 2 * len(sigs) / SLOTS and counts.min() > len(sigs) / SLOTS / 3
    keys = np.frombuffer(rng.bytes(16 * 4000), np.uint64).reshape(-1, 2)
    assert np.bincount(key_slots(keys), minlength=SLOTS).max() < 2 * 4000 / SLOTS


def test_signatures_that_do_not_match_their_shards_documents_are_an_error(tmp_path):
    """Signatures are matched to documents by position: a shard whose files disagree (one rewritten alone) would
    drop the wrong pages."""
    import json
    from types import SimpleNamespace

    from data_pipeline.dedup_tasks import write_index
    from megagpt.errors import DataError

    work = tmp_path / "work" / "process"
    work.mkdir(parents=True)
    np.save(work / "00000.sig.npy", np.zeros((3, 16), np.uint32))
    (work / "00000.hashes.json").write_text(json.dumps({"ids": ["a", "b"], "hashes": ["0" * 40, "1" * 40]}))
    run = SimpleNamespace(output=SimpleNamespace(dir=str(tmp_path)), dedup=DedupConfig(num_perm=16, bands=4, rows=4))
    with pytest.raises(DataError, match=r"00000.sig.npy has 3 signatures for the 2 documents of 00000.hashes.json"):
        write_index(run, "00000")
