"""The dedup steps' memory and time per document, split across tasks, against the dict reduce they replaced.

    python benchmarks/dedup_reduce.py [--documents 100000 400000 2000000] [--parts 1 4] [--shards 50]
                                      [--near 0.2] [--copies 0.1]

Writes a run's process outputs for a generated corpus (CommonCrawl-like ids and urls, 112-value
signatures, a share of near duplicates and of exact copies), then runs each dedup step as a corpus
run does (data_pipeline.dedup_tasks), every task in its own process: the shards' index, the exact
copies and the bands' pairs split into each of --parts, and the reduce that clusters the pairs and
writes the drops. For each step it prints the tasks' total seconds and the largest task's peak
resident memory, also per document above the interpreter's own; then the memory each further
document costs between the smallest and largest corpus. The dict reduce (tests/unit/test_dedup.py's
reference: every id, hash, url and signature held as Python objects, in one process) runs only up to
--dict-max documents; every split is checked to drop the same documents as the first.
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


def step_in_this_process(root: str, names: list[str], step: str, parts: int, task: str) -> None:
    """One dedup step's task over the run at root; print its drop count (the reduce's), seconds and peak RSS as
    JSON. The index step writes every shard's index: its peak is one shard's."""
    from types import SimpleNamespace

    from data_pipeline import dedup_tasks
    from data_pipeline.config import DedupConfig

    cfg = DedupConfig()
    run = SimpleNamespace(output=SimpleNamespace(dir=root), dedup=cfg, executor=SimpleNamespace(dedup_parts=parts))
    start, drops = time.perf_counter(), 0
    if step == "index":
        for n in names:
            dedup_tasks.write_index(run, n)
    elif step in ("exact", "bands"):
        dedup_tasks.run_task(run, f"dedup-{step}", task, names)
    elif step == "reduce":
        from data_pipeline.pipeline import _duplicates

        drops = sum(len(found) for found in _duplicates(run, names))
    elif step == "dict":
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
    print(json.dumps({"drops": drops, "seconds": seconds, "peak_bytes": peak_rss()}))


def peak_rss() -> int:
    """This process's peak resident bytes: VmHWM belongs to its own address space, where getrusage's maxrss
    carries over the parent's peak from before exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def measure(root: str, names: list[str], step: str, parts: int = 1, task: str = "") -> dict:
    proc = subprocess.run([sys.executable, __file__, "--step", step, "--root", root, "--task", task,
                           "--parts", str(parts), "--names", *names], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"dedup step {step} {task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_split(root: str, names: list[str], parts: int) -> dict:
    """Every step of a run with executor.dedup_parts=parts: {step: (tasks, seconds, largest peak, drops)}."""
    from types import SimpleNamespace

    from data_pipeline import dedup_tasks
    from data_pipeline.config import DedupConfig

    shutil.rmtree(os.path.join(root, "work", "dedup"), ignore_errors=True)
    run = SimpleNamespace(dedup=DedupConfig(), executor=SimpleNamespace(dedup_parts=parts))
    steps = {"index": [""], "exact": dedup_tasks.tasks(run, "dedup-exact"),
             "bands": dedup_tasks.tasks(run, "dedup-bands"), "reduce": [""]}
    out = {}
    for step, tasks in steps.items():
        results = [measure(root, names, step, parts, task) for task in tasks]
        out[step] = (len(tasks), sum(r["seconds"] for r in results), max(r["peak_bytes"] for r in results),
                     results[-1]["drops"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, nargs="+", default=[100_000, 400_000, 2_000_000])
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 4], help="executor.dedup_parts values to run")
    parser.add_argument("--shards", type=int, default=50)
    parser.add_argument("--near", type=float, default=0.2, help="share of pages that are near duplicates")
    parser.add_argument("--copies", type=float, default=0.1, help="share of pages that are exact copies")
    parser.add_argument("--dict-max", type=int, default=400_000, help="largest corpus the dict reduce runs on")
    parser.add_argument("--step", choices=["index", "exact", "bands", "reduce", "dict"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--names", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        return step_in_this_process(args.root, args.names, args.step, args.parts[0], args.task)

    print(f"{'documents':>10}{'parts':>6}{'step':>8}{'tasks':>6}{'drops':>10}{'seconds':>9}{'peak MB':>9}"
          f"{'bytes/doc':>10}")
    peaks = {}
    for documents in args.documents:
        root = tempfile.mkdtemp(prefix="megagpt-dedup-bench-")
        try:
            names = make_run(root, documents, args.shards, args.near, args.copies)
            baseline = measure(root, [], "index")["peak_bytes"]  # the interpreter and numpy, before any document
            rows = {(parts, step): result for parts in args.parts
                    for step, result in measure_split(root, names, parts).items()}
            if documents <= args.dict_max:
                r = measure(root, names, "dict")
                rows[("-", "dict")] = (1, r["seconds"], r["peak_bytes"], r["drops"])
            drops = {r[3] for (_, step), r in rows.items() if step in ("reduce", "dict")}
            if len(drops) != 1:
                sys.exit(f"the splits disagree: {rows}")
            for (parts, step), (tasks, seconds, peak, dropped) in rows.items():
                peaks.setdefault((parts, step), []).append((documents, peak))
                shown = dropped if step in ("reduce", "dict") else ""
                print(f"{documents:>10}{parts:>6}{step:>8}{tasks:>6}{shown:>10}{seconds:>9.1f}{peak / 2**20:>9.0f}"
                      f"{(peak - baseline) / documents:>10.0f}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    for (parts, step), points in peaks.items():  # what each further document costs, without the fixed buffers
        if len(points) > 1:
            (n0, p0), (n1, p1) = points[0], points[-1]
            print(f"parts {parts}, {step}: {(p1 - p0) / (n1 - n0):.0f} bytes a further document "
                  f"(largest task, {n0} to {n1} documents)")


if __name__ == "__main__":
    main()
