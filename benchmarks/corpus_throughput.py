"""Corpus pipeline throughput per core, megagpt against datatrove configured as FineWeb uses it.

    python benchmarks/corpus_throughput.py [--pages 8000] [--peer-python .venv-peers/bin/python]

Both run on one core over the same generated crawl (no truncated file: a truncated .warc.gz
aborts datatrove's run): megagpt's stages in this process, datatrove's (WarcReader,
Trafilatura, fastText LanguageFilter on the same offline lid.176 file, FineWeb's Gopher, C4
and FineWeb filters, the four MinHash stages with 14 x 8 buckets on 5-grams) in its own venv
via benchmarks/datatrove_fineweb.py.
Prints documents/s and MB/s (of compressed WARC input) per stage and end to end, and each
system's recall on the planted near-duplicate pairs with 5-gram Jaccard >= 0.8.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core per system: tokenizers' thread pool too

from data_pipeline.config import load_corpus_config  # noqa: E402
from data_pipeline.executors import LocalExecutor, mark_done  # noqa: E402
from data_pipeline.io import read_jsonl_gz  # noqa: E402
from data_pipeline.langid import lid176_path  # noqa: E402
from data_pipeline.pipeline import run_reduce, run_shard, shard_names  # noqa: E402
from data_pipeline.runs import Run  # noqa: E402
from data_pipeline.synthetic import write_crawl  # noqa: E402


def run_megagpt(crawl: str, out: str) -> dict:
    cfg = load_corpus_config(None, [f"input.paths=[{crawl}/*.warc.gz]", f"output.dir={out}", "executor.workers=1",
                                    "tokenize.vocab_size=8000"])
    Run(cfg).close()  # records the run's inputs (the stages read them) without running anything
    ex, names = LocalExecutor(1, progress=False), shard_names(cfg)
    seconds = {}
    for stage in ("process", "dedup", "finalize", "tokenizer", "tokenize", "summary"):
        if stage == "tokenize":
            import megatron.core.datasets.indexed_dataset  # noqa: F401  (as data_pipeline.pipeline.run does)
        start = time.perf_counter()
        if stage in ("process", "finalize", "tokenize"):
            ex.run(out, stage, run_shard, [(n, (cfg, stage, i)) for i, n in enumerate(names)])
        else:
            run_reduce(cfg, stage)
            mark_done(out, stage, "all")
        seconds[stage] = time.perf_counter() - start
    with open(os.path.join(out, "stats.json")) as f:
        stats = json.load(f)["stages"]
    reached = {d["record_id"] for p in glob.glob(f"{out}/work/process/*.jsonl.gz") for d in read_jsonl_gz(p)}
    removed = {d["record_id"] for p in glob.glob(f"{out}/dropped/dedup/*.jsonl.gz") for d in read_jsonl_gz(p)}  # truth: WARC ids
    return {"seconds": seconds, "stats": stats, "reached": reached, "removed": removed}


def recall(pairs, reached, removed) -> tuple[float, int]:
    live = [(a, b) for a, b, j in pairs if j >= 0.8 and a in reached and b in reached]
    return (sum((a in removed) or (b in removed) for a, b in live) / max(len(live), 1)), len(live)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=8000, help="English originals (the plant adds ~42%%)")
    parser.add_argument("--peer-python", default=os.path.join(REPO, ".venv-peers", "bin", "python"))
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    if args.work and os.path.exists(args.work) and os.listdir(args.work):
        sys.exit(f"--work {args.work} is not empty: both pipelines would resume and skip the finished work")
    work = args.work or tempfile.mkdtemp(prefix="megagpt-corpus-bench-")
    crawl = os.path.join(work, "crawl")
    truth = write_crawl(crawl, files=8, pages=args.pages, truncate_last=False)
    records = len(truth.english) + len(truth.exact_pairs) + len(truth.near_pairs) + len(truth.foreign) + \
        len(truth.spam) + len(truth.broken)
    mb = sum(os.path.getsize(p) for p in glob.glob(f"{crawl}/*.warc.gz")) / 1e6

    ours = run_megagpt(crawl, os.path.join(work, "megagpt"))
    s = ours["stats"]
    stage_rows = [("read + extract", s["read"]["seconds"] + s["extract"]["seconds"]),
                  ("language id", s["langid"]["seconds"]), ("heuristic filters", s["filters"]["seconds"]),
                  ("MinHash (signatures, buckets+clusters, filter)",
                   s["signatures"]["seconds"] + ours["seconds"]["dedup"] + ours["seconds"]["finalize"])]
    ours_e2e = ours["seconds"]["process"] + ours["seconds"]["dedup"] + ours["seconds"]["finalize"]
    ours_recall, ours_pairs = recall(truth.near_pairs, ours["reached"], ours["removed"])

    peer = None
    if os.path.exists(args.peer_python):
        proc = subprocess.run([args.peer_python, os.path.join(REPO, "benchmarks", "datatrove_fineweb.py"), crawl,
                               os.path.join(work, "datatrove"), lid176_path(),
                               os.path.join(work, "megagpt", "tokenizer.json")], capture_output=True, text=True)
        if proc.returncode == 0:
            peer = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            print(f"datatrove run failed:\n{proc.stderr[-2000:]}")
    print(f"\ncrawl: {records} records in 8 .warc.gz files, {mb:.1f} MB compressed; one core per system")
    print(f"{'stage':<48}{'megagpt docs/s':>16}{'datatrove docs/s':>18}{'ratio':>8}")
    if peer:
        p = peer["seconds"]
        peer_minhash = sum(v for k, v in p.items() if k.startswith("minhash"))
        peer_e2e = sum(v for k, v in p.items() if k != "tokenize")
        base_ids = set()
        for path in glob.glob(os.path.join(work, "datatrove", "base", "*.jsonl.gz")):
            base_ids |= {d["id"] for d in read_jsonl_gz(path)}
        peer_recall, peer_pairs = recall(truth.near_pairs, base_ids, set(peer["removed_ids"]))
    for name, sec in stage_rows:
        if peer and name.startswith("MinHash"):
            print(f"{name:<48}{records / sec:>16.0f}{records / peer_minhash:>18.0f}{peer_minhash / sec:>8.1f}")
        else:
            print(f"{name:<48}{records / sec:>16.0f}")
    if peer:
        first = stage_rows[0][1] + stage_rows[1][1] + stage_rows[2][1]
        print(f"{'read+extract+langid+filters (datatrove: one pipeline)':<48}"
              f"{records / first:>16.0f}{records / p['extract+langid+filters']:>18.0f}"
              f"{p['extract+langid+filters'] / first:>8.1f}")
        print(f"{'end to end (read .. dedup filter)':<48}{records / ours_e2e:>16.0f}{records / peer_e2e:>18.0f}"
              f"{peer_e2e / ours_e2e:>8.1f}")
        print(f"{'end to end MB/s':<48}{mb / ours_e2e:>16.2f}{mb / peer_e2e:>18.2f}")
        if "tokenize" in p:  # both with the same given tokenizer: training one is megagpt's extra
            ours_tok, peer_tok = ours_e2e + ours["seconds"]["tokenize"], peer_e2e + p["tokenize"]
            print(f"{'end to end with tokenization':<48}{records / ours_tok:>16.0f}{records / peer_tok:>18.0f}"
                  f"{peer_tok / ours_tok:>8.1f}")
        print(f"near-duplicate recall (J >= 0.8): megagpt {ours_recall:.3f} over {ours_pairs} pairs, "
              f"datatrove {peer_recall:.3f} over {peer_pairs} pairs")
    else:
        print(f"{'end to end (read .. dedup filter)':<48}{records / ours_e2e:>16.0f}")
        print(f"near-duplicate recall (J >= 0.8): megagpt {ours_recall:.3f} over {ours_pairs} pairs; "
              f"datatrove not run (install benchmarks/requirements-peers.txt into {args.peer_python})")
    print(f"megagpt also: train tokenizer {ours['seconds']['tokenizer']:.1f} s, tokenize "
          f"{ours['seconds']['tokenize']:.1f} s, merge + stats {ours['seconds']['summary']:.1f} s")
    tokens, bare = encode_batch_alone(os.path.join(work, "megagpt"))
    print(f"tokenize stage {tokens / ours['seconds']['tokenize']:.0f} tokens/s; tokenizers' encode_batch alone on "
          f"the same documents {tokens / bare:.0f} tokens/s (stage / bare: {bare / ours['seconds']['tokenize']:.2f}, "
          f"target >= 0.80)")


def encode_batch_alone(out: str) -> tuple[int, float]:
    """(tokens, seconds) of `tokenizers`' encode_batch over the run's kept documents, nothing else."""
    from megagpt.data.tokenizer import Tokenizer

    texts = [d["text"] for p in sorted(glob.glob(f"{out}/documents/*/*.jsonl.gz")) for d in read_jsonl_gz(p)]
    tokenizer = Tokenizer.load(os.path.join(out, "tokenizer.json"))
    start = time.perf_counter()
    encoded = tokenizer._tok.encode_batch(texts)
    seconds = time.perf_counter() - start
    return sum(len(e.ids) + 1 for e in encoded), seconds  # + EOD, as the shards count


if __name__ == "__main__":
    main()
