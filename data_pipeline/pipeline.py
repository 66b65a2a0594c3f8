"""The corpus run: stages over shards, then the reduce steps between them.

    process      (per input file)  read, url blocklists, extract, langid, filters, hash + MinHash
    dedup-index  (per shard)       hash keys and band values grouped by slot (data_pipeline.dedup_tasks)
    dedup-exact  (per part)        exact copies among a slot range's keys
    dedup-bands  (per band, part)  a band's verified candidate pairs in a slot range
    dedup        (reduce)          clusters of the pairs: exact and fuzzy duplicates across all shards
    finalize     (per shard)       dedup drops, benchmark decontamination, documents/<source>/*.jsonl.gz
    tokenizer    (reduce)          train a byte-level BPE on a seeded sample of the kept text (or use the given one)
    tokenize     (per shard)       Megatron .bin/.idx parts
    summary      (reduce)          the parts merged into tokens/<source>, stats.json and mixture.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from itertools import islice
from typing import Iterable, Iterator, Optional

import numpy as np

from data_pipeline import dedup_tasks
from data_pipeline.config import CorpusConfig
from data_pipeline.dedup import drop_record, find_drops
from data_pipeline.executors import LocalExecutor, is_done, mark_done, unmark_done
from data_pipeline.io import read_jsonl_gz, write_json
from data_pipeline.runs import Run, recorded_inputs
from data_pipeline.stages import (finalize_shard, nbytes, process_shard, sample_candidates_path, shard_name,
                                  tokenize_shard)
from data_pipeline.stats import merge_stats
from data_pipeline.tokens import sample_bound, write_tokenizer
from megagpt.data.shards import merge_shards


# (stage, kind): "shard" stages run once per input file, "part" stages once per slot range (and band) of the dedup
# index, "reduce" stages once over all of them.
STAGES = [("process", "shard"), ("dedup-index", "shard"), ("dedup-exact", "part"), ("dedup-bands", "part"),
          ("dedup", "reduce"), ("finalize", "shard"), ("tokenizer", "reduce"), ("tokenize", "shard"),
          ("summary", "reduce")]


def run(cfg: CorpusConfig, progress: bool = True, mode: str = "resume") -> dict:
    """Every stage in order on this machine; returns the summary (stats.json).

    mode: "resume" (the default: finish what the recorded run left), "restart" or "extend" (data_pipeline.runs).
    """
    with Run(cfg, mode):
        forget_lost_outputs(cfg)
        ex = LocalExecutor(cfg.executor.workers, progress)
        for stage, kind in STAGES:
            if kind != "reduce":
                # a part task holds 1/dedup_parts of one band: at most dedup_parts at once hold one band's share
                ex.run(cfg.output.dir, stage, run_task, [(t, (cfg, stage, t)) for t in stage_tasks(cfg, stage)],
                       at_once=cfg.executor.dedup_parts if kind == "part" else None)
            elif not is_done(cfg.output.dir, stage, "all"):
                run_reduce(cfg, stage)
                mark_done(cfg.output.dir, stage, "all")
            after_reduce(cfg, stage)
        with open(os.path.join(cfg.output.dir, "stats.json")) as f:
            return json.load(f)


def stage_outputs(cfg: CorpusConfig, stage: str, name: str) -> list[str]:
    """The files a finished task (shard `name`, or "all" for a reduce stage) left in output.dir."""
    out, source = cfg.output.dir, cfg.input.source
    if stage == "process":
        return [os.path.join(out, "work", "process", f"{name}{ext}")
                for ext in (".jsonl.gz", ".sig.npy", ".hashes.json", ".stats.json")] + \
            [os.path.join(out, "dropped", "process", f"{name}.jsonl.gz")]
    if stage == "dedup-index":
        return [dedup_tasks.index_prefix(cfg, name) + ext for ext in (".keys.npy", ".bands.npy", ".slots.npy")]
    if stage == "dedup-exact":
        return [dedup_tasks.exact_path(cfg, name)]
    if stage == "dedup-bands":
        return [dedup_tasks.pairs_path(cfg, name)]
    if stage == "dedup":
        return [duplicates_path(cfg, n) for n in shard_names(cfg)]
    if stage == "finalize":
        return [os.path.join(out, "documents", source, f"{name}.jsonl.gz"),
                os.path.join(out, "work", "finalize", f"{name}.json")] + \
            [os.path.join(out, "dropped", kind, f"{name}.jsonl.gz") for kind in ("dedup", "decontam")]
    if stage == "tokenizer":
        return [tokenizer_path(cfg)]
    if stage == "tokenize":
        return [os.path.join(out, "work", "tokens", f"{name}{ext}") for ext in (".bin", ".idx", ".counts.json")]
    summary = os.path.join(out, "stats.json")
    try:
        with open(summary) as f:
            kept = json.load(f)["documents"]
    except (OSError, ValueError, KeyError):
        return [summary]
    prefix = os.path.join(out, "tokens", source)
    return [summary] + ([os.path.join(out, "mixture.json"), prefix + ".bin", prefix + ".idx"] if kept else [])


def forget_lost_outputs(cfg: CorpusConfig) -> None:
    """A finished task whose outputs are gone (deleted, or lost with a disk) is done again, and says so: its
    marker alone would let the run end with success and the files missing. Every task is deterministic, so
    what is redone equals what the later stages read. Later stages are checked first: a dedup reduce whose
    outputs are lost needs its tasks' outputs, which are checked only while the reduce is not done."""
    for stage, kind in reversed(STAGES):
        redo = {}  # task -> its first missing output
        for name in stage_tasks(cfg, stage):
            if is_done(cfg.output.dir, stage, name):
                lost = next((p for p in stage_outputs(cfg, stage, name) if not os.path.isfile(p)), None)
                if lost:
                    unmark_done(cfg.output.dir, stage, name)
                    redo[name] = os.path.relpath(lost, cfg.output.dir)
        if redo:  # one line a stage: a run from an older megagpt may lack a new output in every shard
            first = next(iter(redo.values()))
            tasks = "" if kind == "reduce" else f" of {len(redo)} shard(s)"
            print(f"megagpt corpus: {first}{' and more' if len(redo) > 1 else ''} missing: {stage}{tasks} "
                  f"done again", file=sys.stderr)


def shard_names(cfg: CorpusConfig) -> list[str]:
    return [shard_name(i) for i in range(len(recorded_inputs(cfg.output.dir)))]


def stage_tasks(cfg: CorpusConfig, stage: str) -> list[str]:
    """A stage's task names: its shards, its dedup parts, or "all" for a reduce step. Dedup's tasks are none with
    dedup off or once its reduce is done (by a run begun before dedup had tasks, too: nothing reads them then)."""
    kind = dict(STAGES)[stage]
    if kind == "reduce":
        return ["all"]
    if stage.startswith("dedup-") and (not cfg.dedup.enabled or is_done(cfg.output.dir, "dedup", "all")):
        return []
    return dedup_tasks.tasks(cfg, stage) if kind == "part" else shard_names(cfg)


def tokenizer_path(cfg: CorpusConfig) -> str:
    """The tokenizer.json the run tokenizes with, in output.dir: the given one copied there (the shards and
    mixture.json stay with the tokenizer they were made with, whatever becomes of the given file), else trained."""
    return os.path.join(cfg.output.dir, "tokenizer.json")


def duplicates_path(cfg: CorpusConfig, name: str) -> str:
    """Shard `name`'s duplicates as the dedup reduce found them: {document id: why it goes}. One file a shard, so
    that a finalize task reads its own: one file for the corpus (150M drops at CommonCrawl's scale, ~75 GB) was
    read whole by every one of them."""
    return os.path.join(cfg.output.dir, "work", "dedup", f"{name}.json")


def sample_bound_path(cfg: CorpusConfig) -> str:
    """{"below": the sample key under which the tokenizer's training sample lies, or None}: see data_pipeline.tokens.
    Neither it nor the candidates are a stage's required output: without them (a run begun by an older megagpt)
    the tokenizer reads every document, rather than the run redoing dedup and every finalize task."""
    return os.path.join(cfg.output.dir, "work", "dedup", "sample.json")


def _sample_below(cfg: CorpusConfig) -> Optional[int]:
    try:
        with open(sample_bound_path(cfg)) as f:
            return json.load(f)["below"]
    except FileNotFoundError:
        return None


def run_task(cfg: CorpusConfig, stage: str, task: str) -> None:
    """One task of a shard or part stage (a name stage_tasks gives)."""
    if dict(STAGES).get(stage) == "part":
        dedup_tasks.run_task(cfg, stage, task, shard_names(cfg))
        return
    if stage == "dedup-index":
        dedup_tasks.write_index(cfg, task)
        return
    index = int(task)
    if stage == "process":
        entry = recorded_inputs(cfg.output.dir)[index]
        process_shard(cfg, index, entry["path"], entry["id_prefix"])
    elif stage == "finalize":
        with open(duplicates_path(cfg, shard_name(index))) as f:
            finalize_shard(cfg, index, json.load(f), _sample_below(cfg))
    elif stage == "tokenize":
        tokenize_shard(cfg, index, tokenizer_path(cfg))
    else:
        raise ValueError(f"{stage} is not a per-shard or per-part stage")


def after_reduce(cfg: CorpusConfig, stage: str) -> None:
    """What a finished reduce step leaves behind to remove (again, if a run stopped before it could)."""
    if stage == "dedup" and is_done(cfg.output.dir, stage, "all"):
        dedup_tasks.clean(cfg)


def run_reduce(cfg: CorpusConfig, stage: str) -> None:
    names = shard_names(cfg)
    if stage == "dedup":
        for name, found in zip(names, _duplicates(cfg, names)):
            write_json(duplicates_path(cfg, name), found)
        write_json(sample_bound_path(cfg), {"below": _sample_bound(cfg, names)})
    elif stage == "tokenizer":
        t = cfg.tokenize
        write_tokenizer(t.tokenizer, tokenizer_path(cfg), _training_documents(cfg, names), t.vocab_size,
                        t.train_sample_bytes, t.train_sample_seed)
    elif stage == "summary":
        _write_summary(cfg, names, _merge_tokens(cfg, names), tokenizer_path(cfg))
    else:
        raise ValueError(f"{stage} is not a reduce stage")


def _duplicates(cfg: CorpusConfig, names: list[str]) -> Iterator[dict]:
    """Per shard, its documents that dedup drops (across the whole corpus): {id: why}, from the dedup tasks' exact
    copies and verified pairs.

    Memory follows the copies and the rows in pairs, not the corpus; signatures stay in the shards'
    files, and the names of the documents that drops point at (ids, record_ids and urls: at
    CommonCrawl's scale most of the bytes) wait in a temporary file, read back by offset. Each
    shard's `hashes.json` is read twice (referenced names, its drops) rather than held.
    """
    if not cfg.dedup.enabled:
        yield from ({} for _ in names)
        return
    work = os.path.join(cfg.output.dir, "work", "process")
    sigs = dedup_tasks.signature_files(cfg, names)
    drops = find_drops(dedup_tasks.copies(cfg), dedup_tasks.verified_pairs(cfg), sigs, cfg.dedup)
    wanted = drops.referenced()
    ends = np.zeros(len(wanted) + 1, np.int64)
    spill_dir = os.path.join(cfg.output.dir, "work", "dedup")
    os.makedirs(spill_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=spill_dir) as spill:
        k = 0
        for n, start, end in zip(names, sigs.offsets, sigs.offsets[1:]):
            rows = wanted[np.searchsorted(wanted, start):np.searchsorted(wanted, end)]
            if len(rows):
                shard = _hashes(work, n)
                for r in rows.tolist():
                    ends[k + 1] = ends[k] + spill.write(json.dumps(_name(shard, r - int(start))).encode())
                    k += 1
        spill.flush()

        def named(row: int) -> dict:
            k = int(np.searchsorted(wanted, row))
            return json.loads(os.pread(spill.fileno(), int(ends[k + 1] - ends[k]), int(ends[k])))

        bounds = np.searchsorted(drops.row, sigs.offsets)
        for n, start, lo, hi in zip(names, sigs.offsets, bounds, bounds[1:]):
            if lo == hi:
                yield {}
                continue
            ids = _hashes(work, n)["ids"]
            yield {ids[int(drops.row[k] - start)]: drop_record(drops, k, named) for k in range(lo, hi)}


def _hashes(work: str, name: str) -> dict:
    with open(os.path.join(work, f"{name}.hashes.json")) as f:
        return json.load(f)


def _name(shard: dict, i: int) -> dict:
    """A document's id, record_id and url as its drop records name it (None for a shard processed before
    record_id and url were recorded)."""
    return {"id": shard["ids"][i], **{field: shard[f"{field}s"][i] if f"{field}s" in shard else None
                                      for field in ("record_id", "url")}}


def _sample_bound(cfg: CorpusConfig, names: list[str]) -> Optional[int]:
    """The dedup survivors' bound on the training sample's keys (tokens.sample_bound); None with a given tokenizer,
    or when a shard was processed before its sizes were recorded."""
    if cfg.tokenize.tokenizer:
        return None
    work = os.path.join(cfg.output.dir, "work", "process")
    sized = []

    def survivors():
        for n in names:
            shard = _hashes(work, n)
            sized.append("bytes" in shard)
            if not sized[-1]:
                return
            with open(duplicates_path(cfg, n)) as f:
                dropped = json.load(f)
            kept = [k for k, i in enumerate(shard["ids"]) if i not in dropped]
            yield [shard["ids"][k] for k in kept], [shard["bytes"][k] for k in kept]

    bound = sample_bound(survivors(), cfg.tokenize.train_sample_bytes, cfg.tokenize.train_sample_seed)
    return bound if all(sized) else None


def _training_documents(cfg: CorpusConfig, names: list[str]) -> Iterable[tuple[str, str]]:
    """(id, text) of the documents the training sample is drawn from: the finalize tasks' candidates when every
    shard set them aside under the dedup reduce's bound and they hold more than the budget (the sample then lies
    among them), else every kept document."""
    below = _sample_below(cfg)

    def candidates():
        for n in names:
            yield from ((d["id"], d["text"]) for d in islice(read_jsonl_gz(sample_candidates_path(cfg, n)), 1, None))

    def candidate_bytes() -> Optional[int]:
        """Their UTF-8 bytes, in one read; None when a shard set none aside under this bound."""
        total = 0
        for n in names:
            path = sample_candidates_path(cfg, n)
            if not os.path.isfile(path):
                return None
            records = iter(read_jsonl_gz(path))
            if next(records, {}).get("below") != below:
                return None
            total += sum(nbytes(d["text"]) for d in records)
        return total

    if below is not None and (candidate_bytes() or 0) > cfg.tokenize.train_sample_bytes:
        return candidates()
    return _documents(cfg, names)


def _documents(cfg: CorpusConfig, names: list[str]):
    """(id, text) of every kept document, in shard order."""
    for n in names:
        yield from ((d["id"], d["text"]) for d in read_jsonl_gz(os.path.join(cfg.output.dir, "documents",
                                                                             cfg.input.source, f"{n}.jsonl.gz")))


def _merge_tokens(cfg: CorpusConfig, names: list[str]) -> dict:
    """Concatenate the per-shard parts into tokens/<source>.bin/.idx."""
    out = cfg.output.dir
    totals, parts = {"documents": 0, "tokens": 0}, []
    for n in names:
        with open(os.path.join(out, "work", "tokens", f"{n}.counts.json")) as f:
            counts = json.load(f)
        for key, value in counts.items():
            totals[key] += value
        if counts["documents"]:  # a shard that kept nothing has an empty .bin, which cannot be mapped
            parts.append(os.path.join(out, "work", "tokens", n))
    prefix = os.path.join(out, "tokens", cfg.input.source)
    for ext in (".bin", ".idx"):  # a rerun that now keeps nothing must not leave the old tokens behind
        if os.path.exists(prefix + ext):
            os.remove(prefix + ext)
    if not parts:
        return totals
    merge_shards(parts, prefix)
    return totals


def _write_summary(cfg: CorpusConfig, names: list[str], counts: dict, tokenizer_path: str) -> dict:
    out = cfg.output.dir
    parts, errors = [], []
    for n in names:
        with open(os.path.join(out, "work", "process", f"{n}.stats.json")) as f:
            shard = json.load(f)
        parts.append(shard["stats"])
        errors += shard["errors"]
    stats = merge_stats(parts)
    entering = stats.get("quality", stats.get("filters", {})).get("kept", 0)
    for stage, on in (("dedup", cfg.dedup.enabled), ("decontam", bool(cfg.decontam.paths))):
        if not on:  # a stage turned off has no row (corpus explain says "off")
            stats.pop(stage, None)
            continue
        dropped: dict = {}
        for n in names:
            for d in read_jsonl_gz(os.path.join(out, "dropped", stage, f"{n}.jsonl.gz")):
                dropped[d["reason"]] = dropped.get(d["reason"], 0) + 1
        seconds = {"seconds": stats[stage]["seconds"]} if stage in stats else {}  # dedup's signatures, timed per shard
        stats[stage] = {"in": entering, "kept": entering - sum(dropped.values()), "dropped": dict(sorted(dropped.items())),
                        **seconds}
        entering = stats[stage]["kept"]
    if "decontam" in stats:  # documents cut and kept: how many, the pieces they became, the pieces too short to keep
        for n in names:
            with open(os.path.join(out, "work", "finalize", f"{n}.json")) as f:
                for key, value in json.load(f).items():
                    stats["decontam"][key] = stats["decontam"].get(key, 0) + value
    summary = {"stages": stats, "errors": errors, "documents": counts["documents"], "tokens": counts["tokens"]}
    mixture = os.path.join(out, "mixture.json")
    if not counts["documents"]:  # nothing to train on: say where the documents went, and offer no mixture
        summary["kept_nothing"] = largest_drop(stats)
        write_json(os.path.join(out, "stats.json"), summary)
        if os.path.exists(mixture):
            os.remove(mixture)
        return summary
    write_json(os.path.join(out, "stats.json"), summary)
    write_json(mixture, {
        "tokenizer": os.path.relpath(tokenizer_path, out),
        "sources": [{"source": cfg.input.source, "prefix": os.path.join("tokens", cfg.input.source), "weight": 1.0,
                     "documents": counts["documents"], "tokens": counts["tokens"]}],
    })
    return summary


def largest_drop(stats: dict) -> dict:
    """The stage that removed the most documents: {"stage", "dropped", "in"} (the read stage, none dropped, where
    no record was read)."""
    stage, record = max(stats.items(), key=lambda kv: kv[1].get("in", 0) - kv[1].get("kept", 0))
    if record.get("in", 0) == record.get("kept", 0):
        stage, record = "read", stats.get("read", {})
    return {"stage": stage, "dropped": record.get("in", 0) - record.get("kept", 0), "in": record.get("in", 0)}


def kept_nothing_why(worst: dict) -> str:
    """largest_drop's record in words."""
    if not worst["in"]:
        return "no record was read (the file errors are in stats.json)"
    return f"stage {worst['stage']} removed the most ({worst['dropped']} of {worst['in']})"
