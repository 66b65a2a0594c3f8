"""Corpus pipeline throughput per core, megagpt against datatrove configured as FineWeb uses it.

    python benchmarks/corpus_throughput.py [--pages 8000] [--peer-python .venv-peers/bin/python]

Both run on one core over the same generated crawl (no truncated file: a truncated .warc.gz
aborts datatrove's run): megagpt's stages in this process, datatrove's (WarcReader,
Trafilatura, fastText LanguageFilter on the same offline lid.176 file, FineWeb's Gopher, C4
and FineWeb filters, the four MinHash stages with 14 x 8 buckets on 5-grams, then
DocumentTokenizer with the tokenizer megagpt's run trained) in its own venv via
benchmarks/datatrove_fineweb.py. `tokenizers` gets one thread (RAYON_NUM_THREADS=1) in both.
Prints documents/s per stage and end to end, MB/s (of compressed WARC input) end to end, each heuristic
filter's time (datatrove's from its own per-step timing, in which each filter splits the page
into words itself; megagpt splits once, a row of its own), the tokenize stage's tokens/s beside
`tokenizers`' bare encode_batch_fast (the call the stage makes) over the same documents in memory
(its ceiling; the two timed in turns, best of 3), and each system's recall on the planted
near-duplicate pairs with 5-gram Jaccard >= 0.8.
"""

from __future__ import annotations

import argparse
import atexit
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before tokenizers starts its pool; datatrove's run inherits it

from data_pipeline.config import load_corpus_config  # noqa: E402
from data_pipeline.executors import LocalExecutor, mark_done  # noqa: E402
from data_pipeline.io import read_jsonl_gz  # noqa: E402
from data_pipeline.langid import lid176_path  # noqa: E402
from data_pipeline.pipeline import STAGES, run_reduce, run_task, shard_names, stage_tasks  # noqa: E402
from data_pipeline.runs import Run  # noqa: E402
from data_pipeline.synthetic import write_crawl  # noqa: E402


def run_megagpt(crawl: str, out: str) -> dict:
    cfg = load_corpus_config(None, [f"input.paths=[{crawl}/*.warc.gz]", f"output.dir={out}", "executor.workers=1",
                                    "tokenize.vocab_size=8000"])
    Run(cfg).close()  # records the run's inputs (the stages read them) without running anything
    ex, names = LocalExecutor(1, progress=False), shard_names(cfg)
    seconds = {}
    for stage, kind in STAGES:
        start = time.perf_counter()
        if kind != "reduce":
            ex.run(out, stage, run_task, [(t, (cfg, stage, t)) for t in stage_tasks(cfg, stage)])
        else:
            run_reduce(cfg, stage)
            mark_done(out, stage, "all")
        step = stage.split("-")[0]  # dedup's tasks and its reduce count as one stage
        seconds[step] = seconds.get(step, 0.0) + time.perf_counter() - start
    with open(os.path.join(out, "stats.json")) as f:
        summary = json.load(f)
    stats = summary["stages"]
    reached = {d["record_id"] for p in glob.glob(f"{out}/work/process/*.jsonl.gz") for d in read_jsonl_gz(p)}
    removed = {d["record_id"] for p in glob.glob(f"{out}/dropped/dedup/*.jsonl.gz") for d in read_jsonl_gz(p)}  # truth: WARC ids
    tokens, stage, bare = tokenize_against_encode_batch(cfg, names)
    return {"seconds": seconds, "stats": stats, "reached": reached, "removed": removed,
            "tokens": summary["tokens"] - summary["documents"],  # without the EODs, as encode_batch counts
            "bare_tokens": tokens, "tokenize_best": stage, "encode_batch_best": bare}


def tokenize_against_encode_batch(cfg, names: list[str], rounds: int = 3) -> tuple[int, float, float]:
    """(tokens, stage seconds, encode_batch_fast seconds): the tokenize stage over every shard (reading
    documents, encoding, writing .bin/.idx) and tokenizers' encode_batch_fast alone over the same
    documents already in memory, taken in turns, the best of `rounds` each, so a neighbour's
    load on the machine falls on both alike."""
    from tokenizers import Tokenizer

    out = cfg.output.dir
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    texts = [d["text"] for p in sorted(glob.glob(f"{out}/documents/*/*.jsonl.gz")) for d in read_jsonl_gz(p)]
    stage, bare = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for name in names:
            run_task(cfg, "tokenize", name)  # rewrites the same parts
        stage.append(time.perf_counter() - start)
        start = time.perf_counter()
        # the stage's own call (megagpt.data.tokenizer): encode_batch also computes offsets, a slower bar
        tokens = sum(len(e.ids) for e in tok.encode_batch_fast(texts))
        bare.append(time.perf_counter() - start)
    return tokens, min(stage), min(bare)


def recall(pairs, reached, removed) -> tuple[float, int]:
    live = [(a, b) for a, b, j in pairs if j >= 0.8 and a in reached and b in reached]
    return (sum((a in removed) or (b in removed) for a, b in live) / max(len(live), 1)), len(live)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=8000, help="English originals (the plant adds ~42%%)")
    parser.add_argument("--peer-python", default=os.path.join(REPO, ".venv-peers", "bin", "python"))
    parser.add_argument("--work", help="where to put the crawl and both runs, kept (default: a temporary dir)")
    args = parser.parse_args()
    if args.work and os.path.exists(args.work) and os.listdir(args.work):
        sys.exit(f"--work {args.work} is not empty: both pipelines would resume and skip the finished work")
    work = args.work or tempfile.mkdtemp(prefix="megagpt-corpus-bench-")
    if not args.work:  # the crawl and both systems' outputs; --work keeps them
        atexit.register(shutil.rmtree, work, True)
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
                   s["dedup"]["seconds"] + ours["seconds"]["dedup"] + ours["seconds"]["finalize"])]
    ours_e2e = ours["seconds"]["process"] + ours["seconds"]["dedup"] + ours["seconds"]["finalize"]
    ours_tokenize = ours["seconds"]["tokenize"]  # datatrove's tokenizer step leaves its parts unmerged too
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
    print(f"{'stage':<54}{'megagpt docs/s':>16}{'datatrove docs/s':>18}{'ratio':>8}")
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
            print(f"{name:<54}{records / sec:>16.0f}{records / peer_minhash:>18.0f}{peer_minhash / sec:>8.1f}")
        else:
            print(f"{name:<54}{records / sec:>16.0f}")
    if peer:
        first = stage_rows[0][1] + stage_rows[1][1] + stage_rows[2][1]
        print(f"{'read+extract+langid+filters (datatrove: one pipeline)':<54}"
              f"{records / first:>16.0f}{records / p['extract+langid+filters']:>18.0f}"
              f"{p['extract+langid+filters'] / first:>8.1f}")
        print(f"{'end to end (read .. dedup filter)':<54}{records / ours_e2e:>16.0f}{records / peer_e2e:>18.0f}"
              f"{peer_e2e / ours_e2e:>8.1f}")
        print(f"{'end to end MB/s':<54}{mb / ours_e2e:>16.2f}{mb / peer_e2e:>18.2f}")
        print(f"{'end to end (read .. tokenize; tokenizer given)':<54}{records / (ours_e2e + ours_tokenize):>16.0f}"
              f"{records / (peer_e2e + p['tokenize']):>18.0f}{(peer_e2e + p['tokenize']) / (ours_e2e + ours_tokenize):>8.1f}")
        print(f"near-duplicate recall (J >= 0.8): megagpt {ours_recall:.3f} over {ours_pairs} pairs, "
              f"datatrove {peer_recall:.3f} over {peer_pairs} pairs")
    else:
        print(f"{'end to end (read .. dedup filter)':<54}{records / ours_e2e:>16.0f}")
        print(f"{'end to end MB/s':<54}{mb / ours_e2e:>16.2f}")
        print(f"{'end to end (read .. tokenize; tokenizer given)':<54}{records / (ours_e2e + ours_tokenize):>16.0f}")
        print(f"near-duplicate recall (J >= 0.8): megagpt {ours_recall:.3f} over {ours_pairs} pairs; "
              f"datatrove not run (install benchmarks/requirements-peers.txt into {args.peer_python})")
    stage_rate, bare_rate = ours["tokens"] / ours["tokenize_best"], ours["bare_tokens"] / ours["encode_batch_best"]
    print(f"tokenize stage (read documents, encode, write .bin/.idx), best of 3: {stage_rate:,.0f} tokens/s "
          f"(in the run: {ours['tokens'] / ours['seconds']['tokenize']:,.0f}); tokenizers' encode_batch_fast alone on the "
          f"same {ours['bare_tokens']:,} tokens, best of 3 in turn with it: {bare_rate:,.0f} tokens/s; "
          f"ratio {stage_rate / bare_rate:.2f}")
    if peer:
        print(f"datatrove DocumentTokenizer (read, encode, write): {peer['tokens'] / peer['seconds']['tokenize']:,.0f} "
              f"tokens/s ({peer['tokens']:,} tokens with EOS)")
    steps = s["filters"].get("step_seconds", {})
    print(f"\n{'heuristic filter (time over the run)':<40}{'megagpt s':>11}{'datatrove s':>13}{'ratio':>8}")
    for step in ("words", "gopher_repetition", "gopher_quality", "c4", "fineweb"):
        theirs = peer["filter_seconds"].get(step) if peer else None
        label = "words (megagpt: once per page, shared)" if step == "words" else step
        print(f"{label:<40}{steps.get(step, 0.0):>11.2f}" + (f"{theirs:>13.2f}{theirs / max(steps.get(step, 0.0), 1e-9):>8.1f}"
                                                          if theirs is not None else ""))
    print(f"megagpt also: train tokenizer {ours['seconds']['tokenizer']:.1f} s, tokenize "
          f"{ours['seconds']['tokenize']:.1f} s, merge + stats {ours['seconds']['summary']:.1f} s")


if __name__ == "__main__":
    main()
