"""The peer side of benchmarks/corpus_throughput.py: datatrove configured as FineWeb uses it
(extraction, language, the Gopher/C4/FineWeb filters, MinHash).

Runs in its own environment (see benchmarks/requirements-peers.txt):
    python benchmarks/datatrove_fineweb.py CRAWL_DIR WORK_DIR LID176_PATH [TOKENIZER_JSON]
and prints one JSON object: seconds per stage, documents in/out, the ids MinHash removed, and
with TOKENIZER_JSON the tokens its DocumentTokenizer wrote from the deduplicated documents.
"""

import glob
import json
import os
import sys
import time


def filter_seconds(logging_dir: str) -> dict:
    """Each heuristic filter's own time (datatrove times every filter call), by megagpt's names."""
    with open(os.path.join(logging_dir, "stats.json")) as f:
        steps = json.load(f)
    names = {"Gopher Repetition": "gopher_repetition", "Gopher Quality": "gopher_quality", "C4 Quality": "c4",
             "FineWeb Quality": "fineweb"}
    seconds = {}
    for step in steps:
        for shown, ours in names.items():
            if step["name"].endswith(shown):
                t = step["time_stats"]
                seconds[ours] = t if isinstance(t, (int, float)) else t["total"]
    return seconds


def main() -> None:
    crawl_dir, work, lid_path = sys.argv[1:4]
    tokenizer = sys.argv[4] if len(sys.argv) > 4 else None
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter, LanguageFilter)
    from datatrove.pipeline.readers import JsonlReader, WarcReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers.jsonl import JsonlWriter
    from datatrove.utils import lid

    lid.FT176LID.MODEL_URL = lid_path  # the same offline lid.176 file megagpt uses; datatrove would download it
    files = len(glob.glob(os.path.join(crawl_dir, "*.warc.gz")))
    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    timings = {}

    def timed(name, pipeline, tasks):
        start = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=f"{work}/logs/{name}").run()
        timings[name] = time.perf_counter() - start

    # FineWeb's first pipeline: extraction, language, then its heuristic filters (C4's without the
    # terminal-punctuation rule), as megagpt's process stage does them
    timed("extract+langid+filters", [WarcReader(crawl_dir, glob_pattern="*.warc.gz"),
                                     Trafilatura(favour_precision=True),
                                     LanguageFilter(languages=["en"], language_threshold=0.65),
                                     GopherRepetitionFilter(), GopherQualityFilter(),
                                     C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter(),
                                     JsonlWriter(f"{work}/base")], files)
    timed("minhash-signatures", [JsonlReader(f"{work}/base"), MinhashDedupSignature(f"{work}/sigs", config=config)], files)
    timed("minhash-buckets", [MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=config)], config.num_buckets)
    timed("minhash-cluster", [MinhashDedupCluster(f"{work}/buckets", f"{work}/remove_ids", config=config)], 1)
    timed("minhash-filter", [JsonlReader(f"{work}/base"),
                             MinhashDedupFilter(f"{work}/remove_ids", exclusion_writer=JsonlWriter(f"{work}/removed")),
                             JsonlWriter(f"{work}/deduped")], files)
    if tokenizer:  # FineWeb's tokenizer step, unshuffled as ours, with the tokenizer megagpt's run trained
        timed("tokenize", [JsonlReader(f"{work}/deduped"),
                           DocumentTokenizer(f"{work}/tokens", tokenizer_name_or_path=tokenizer, eos_token="<|endoftext|>",
                                             shuffle_documents=False)], files)


    def ids(folder):
        import gzip

        out = []
        for path in sorted(glob.glob(f"{folder}/*.jsonl.gz")):
            with gzip.open(path, "rt") as f:
                out += [json.loads(line)["id"] for line in f]
        return out

    tokens = sum(os.path.getsize(p) for p in glob.glob(f"{work}/tokens/*.ds")) // 2  # uint16 tokens, EOS included
    print(json.dumps({"seconds": timings, "filter_seconds": filter_seconds(f"{work}/logs/extract+langid+filters"), "extracted_kept": len(ids(f"{work}/base")),
                      "final": len(ids(f"{work}/deduped")), "removed_ids": ids(f"{work}/removed"), "tokens": tokens}))


if __name__ == "__main__":
    main()
