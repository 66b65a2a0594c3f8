"""The dedup reduce's memory and time per document: the array reduce against the dict reduce it replaced.

    python benchmarks/dedup_reduce.py [--documents 100000 400000 2000000] [--shards 50] [--near 0.2] [--copies 0.1]

Writes a run's process outputs for a generated corpus (CommonCrawl-like ids and urls, 112-value
signatures, a share of near duplicates and of exact copies), then runs each reduce in its own
process and prints its seconds, peak resident memory and that memory per document (above the interpreter's own), then the memory each further document
costs between the smallest and largest corpus each reduce ran on. The dict
reduce (tests/unit/test_dedup.py's reference: every id, hash, url and signature held as Python
objects) runs only up to --dict-max documents; the two are checked to give the same drops.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def make_run(root: str, documents: int, shards: int, near: float, copies: float, seed: int = 0) -> list[str]:
    """work/process/<shard>.sig.npy and .hashes.json as process_shard leaves them."""
    from data_pipeline.config import DedupConfig

    cfg = DedupConfig()
    rng = np.random.default_rng(seed)
    sigs = rng.integers(0, 2 ** 32, (documents, cfg.num_perm), dtype=np.uint32)
    kind = rng.random(documents)
    earlier = (rng.random(documents) * np.arange(documents)).astype(np.int64)
    near_rows = np.flatnonzero((kind < near) & (np.arange(documents) > 0))
    sigs[near_rows] = sigs[earlier[near_rows]]  # a near duplicate: an earlier page with 15% of its values changed
    changed = rng.random((len(near_rows), cfg.num_perm)) < 0.15
    sigs[near_rows] = np.where(changed, rng.integers(0, 2 ** 32, changed.shape, dtype=np.uint32), sigs[near_rows])
    hashes = [hashlib.sha1(row.tobytes()).hexdigest() for row in sigs]
    copy_rows = np.flatnonzero((kind >= near) & (kind < near + copies) & (np.arange(documents) > 0))
    for row in copy_rows:
        hashes[row] = hashes[earlier[row]]
        sigs[row] = sigs[earlier[row]]
    work = os.path.join(root, "work", "process")
    os.makedirs(work, exist_ok=True)
    names, cuts = [], np.linspace(0, documents, shards + 1).astype(int)
    for k, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
        name = f"{k:05d}"
        names.append(name)
        np.save(os.path.join(work, f"{name}.sig.npy"), sigs[lo:hi])
        crawl = "crawl-data/CC-MAIN-2024-10/segments/1707947473347.0/warc/CC-MAIN-20240220211055-00000.warc.gz"
        with open(os.path.join(work, f"{name}.hashes.json"), "w") as f:
            json.dump({"ids": [f"{crawl}:{i}" for i in range(lo, hi)], "hashes": hashes[lo:hi],
                       "record_ids": [f"<urn:uuid:{hashlib.md5(str(i).encode()).hexdigest()}>" for i in range(lo, hi)],
                       "urls": [f"https://www.example-{i % 9973}.com/news/2024/02/article-{i}.html"
                                for i in range(lo, hi)]}, f)
    return names


def reduce_in_this_process(root: str, names: list[str], kind: str) -> None:
    """Run one reduce over the run at root; print its drop count, seconds and peak RSS as JSON."""
    from types import SimpleNamespace

    from data_pipeline.config import DedupConfig

    cfg = DedupConfig()
    start = time.perf_counter()
    if kind == "array":
        from data_pipeline.pipeline import _duplicates

        run = SimpleNamespace(output=SimpleNamespace(dir=root), dedup=cfg)
        drops = sum(len(found) for found in _duplicates(run, names))
    else:
        from tests.unit.test_dedup import _reference_duplicates

        work, ids, hashes, urls, record_ids, sigs = os.path.join(root, "work", "process"), [], [], [], [], []
        for n in names:
            with open(os.path.join(work, f"{n}.hashes.json")) as f:
                shard = json.load(f)
            ids += shard["ids"]
            hashes += shard["hashes"]
            record_ids += shard["record_ids"]
            urls += shard["urls"]
            sigs.append(np.load(os.path.join(work, f"{n}.sig.npy")))
        drops = len(_reference_duplicates(ids, hashes, np.concatenate(sigs), cfg, record_ids, urls))
    seconds = time.perf_counter() - start
    peak = peak_rss()
    print(json.dumps({"drops": drops, "seconds": seconds, "peak_bytes": peak}))


def peak_rss() -> int:
    """This process's peak resident bytes: VmHWM belongs to its own address space, where getrusage's maxrss
    carries over the parent's peak from before exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def measure(root: str, names: list[str], kind: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--reduce", kind, "--root", root, "--names", *names],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{kind} reduce failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, nargs="+", default=[100_000, 400_000, 2_000_000])
    parser.add_argument("--shards", type=int, default=50)
    parser.add_argument("--near", type=float, default=0.2, help="share of pages that are near duplicates")
    parser.add_argument("--copies", type=float, default=0.1, help="share of pages that are exact copies")
    parser.add_argument("--dict-max", type=int, default=400_000, help="largest corpus the dict reduce runs on")
    parser.add_argument("--reduce", choices=["array", "dict"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--names", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reduce:
        return reduce_in_this_process(args.root, args.names, args.reduce)

    print(f"{'documents':>10}{'reduce':>8}{'drops':>10}{'seconds':>10}{'peak MB':>10}{'bytes/doc':>11}")
    peaks = {}
    for documents in args.documents:
        root = tempfile.mkdtemp(prefix="megagpt-dedup-bench-")
        try:
            names = make_run(root, documents, args.shards, args.near, args.copies)
            baseline = measure(root, [], "array")["peak_bytes"]  # the interpreter and numpy, before any document
            results = {kind: measure(root, names, kind)
                       for kind in (["array", "dict"] if documents <= args.dict_max else ["array"])}
            if len({r["drops"] for r in results.values()}) != 1:
                sys.exit(f"the reduces disagree: {results}")
            for kind, r in results.items():
                held = r["peak_bytes"] - baseline
                peaks.setdefault(kind, []).append((documents, r["peak_bytes"]))
                print(f"{documents:>10}{kind:>8}{r['drops']:>10}{r['seconds']:>10.1f}{r['peak_bytes'] / 2**20:>10.0f}"
                      f"{held / documents:>11.0f}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    for kind, points in peaks.items():  # what each further document costs, without the fixed buffers
        if len(points) > 1:
            (n0, p0), (n1, p1) = points[0], points[-1]
            print(f"{kind}: {(p1 - p0) / (n1 - n0):.0f} bytes a document between {n0} and {n1} documents")


if __name__ == "__main__":
    main()
