"""The per-shard work: one input file in, kept documents + signatures + dropped documents + stats out."""

from __future__ import annotations

import contextlib
import os
import time
from functools import lru_cache
from typing import Optional

import numpy as np

from data_pipeline.config import CorpusConfig
from data_pipeline.decontam import Decontaminator, benchmark_texts
from data_pipeline.dedup import content_hash, signature
from data_pipeline.extract import extract_text
from data_pipeline.filters import apply_filters
from data_pipeline.io import atomic_path, read_jsonl_gz, write_json, write_jsonl_gz
from data_pipeline.langid import NO_LABEL, identify
from data_pipeline.pii import redact
from data_pipeline.quality import pareto_keep, quality_score
from data_pipeline.readers import ReadError, Skipped, read_file
from data_pipeline.stats import StageStats
from data_pipeline.tokens import sample_key
from data_pipeline.urls import blocklist, host_of


def nbytes(text) -> int:
    """The UTF-8 size of a text (stats.json counts bytes; a lone surrogate from JSONL counts its 3)."""
    return len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))


def shard_name(index: int) -> str:
    return f"{index:05d}"


class _Clock:
    """Adds the time of each call to its stage's seconds."""

    def __init__(self, stats: StageStats):
        self.stats = stats

    def run(self, stage: str, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.stats.timed(stage, time.perf_counter() - start)


def process_shard(cfg: CorpusConfig, index: int, path: str, id_prefix: str) -> None:
    """read > url blocklists > extract > langid > heuristic filters > quality > pii > hash + MinHash signature,
    for one input file.

    A document's id is `<id_prefix>:<record index>` (id_prefix: the file's path relative to the
    run's inputs): unique within the run, whatever the records' own ids say.
    """
    out, name = cfg.output.dir, shard_name(index)
    stats, kept, dropped, errors = StageStats(), [], [], []

    def drop(ids, stage, reason, **extra):
        stats.dropped(stage, reason)
        dropped.append({**ids, "stage": stage, "reason": reason, **extra})

    reader, clock = read_file(path), _Clock(stats)
    blocked = blocklist(tuple(cfg.url.blocklists)) if cfg.url.blocklists else None
    while True:
        item = clock.run("read", next, reader, None)
        if item is None:
            break
        if isinstance(item, ReadError):
            errors.append({"file": item.file, "reason": item.reason})  # a file's damage, not a document
            continue
        if isinstance(item, Skipped):
            stats.skipped("read", item.reason)
            continue
        ids = {"id": f"{id_prefix}:{item.index}", "record_id": item.record_id, "url": item.url}
        size = nbytes(item.payload) if isinstance(item.payload, (str, bytes)) else 0
        stats.saw("read", size)
        if item.unreadable:
            drop(ids, "read", item.unreadable, detail=item.detail)
            continue
        stats.kept("read", size)
        if blocked is not None:
            stats.saw("url", size)
            host = clock.run("url", host_of, item.url)
            if host is None:  # kept: nothing to judge it by, counted
                stats.skipped("url", "no host to judge")
            hit = clock.run("url", blocked.match_host, host)
            if hit:
                drop(ids, "url", "blocked domain", domain=hit[0], blocklist=hit[1])
                continue
            stats.kept("url", size)
        stats.saw("extract", size)
        text, reason = clock.run("extract", extract_text, item)
        if reason:
            drop(ids, "extract", reason)
            continue
        stats.kept("extract", nbytes(text))
        doc = _judge(cfg, ids["id"], text, stats, clock, lambda *a, **k: drop(ids, *a, **k))
        if doc is not None:
            kept.append({**ids, "source": cfg.input.source, **doc,
                         **({"warc_truncated": item.crawler_cut} if item.crawler_cut else {})})

    start = time.perf_counter()
    hashes = [content_hash(d["text"]) for d in kept]
    sigs = np.stack([signature(d["text"], cfg.dedup) for d in kept]) if kept and cfg.dedup.enabled else \
        np.zeros((len(kept), cfg.dedup.num_perm), np.uint32)
    stats.timed("dedup", time.perf_counter() - start)  # dedup's per-shard half; its counts come at the reduce

    work = os.path.join(out, "work", "process")
    # the kept text until finalize (and --extend, and explain) reads it: level 1 takes it to about 2.5x smaller at
    # 100 MB/s, a percent of the stage's time; stored (level 0), it took more disk than the run's documents
    write_jsonl_gz(os.path.join(work, f"{name}.jsonl.gz"), kept, level=1)
    with atomic_path(os.path.join(work, f"{name}.sig.npy")) as tmp, open(tmp, "wb") as f:
        np.save(f, sigs)
    # record_id and url ride along so that dedup's drops can name the kept document without reading text, and the
    # sizes so that the dedup reduce can bound the tokenizer's training sample
    write_json(os.path.join(work, f"{name}.hashes.json"), {"ids": [d["id"] for d in kept], "hashes": hashes,
                                                           "record_ids": [d["record_id"] for d in kept],
                                                           "urls": [d["url"] for d in kept],
                                                           "bytes": [nbytes(d["text"]) for d in kept]})
    write_jsonl_gz(os.path.join(out, "dropped", "process", f"{name}.jsonl.gz"), dropped, cfg.output.gzip_level)
    write_json(os.path.join(work, f"{name}.stats.json"), {"stats": stats.to_dict(), "errors": errors})


def _judge(cfg: CorpusConfig, doc_id: str, text: str, stats: StageStats, clock: "_Clock", drop):
    """Language, heuristic and quality verdicts on one text, then its personal data replaced: its document fields,
    or None once dropped.

    A verdict that raises (a library failing on one odd text) drops that document with the
    stage and the error's type, as a counted drop: one record never stops a shard.
    """
    stage, size = "langid", nbytes(text)
    try:
        stats.saw("langid", size)
        lang, score = clock.run("langid", identify, text)
        if cfg.langid.languages and (lang not in cfg.langid.languages or score < cfg.langid.threshold):
            why = "no language label" if lang == NO_LABEL else \
                f"language {lang}" if lang not in cfg.langid.languages else "low confidence"
            drop("langid", why, lang=lang, lang_score=round(score, 4))
            return None
        stats.kept("langid", size)
        stage = "filters"
        stats.saw("filters", size)
        text, reason = clock.run("filters", apply_filters, text, cfg.filters, stats.step_seconds("filters"))
        if reason:
            drop("filters", reason)
            return None
        size = nbytes(text)  # the filters may have removed lines
        stats.kept("filters", size)
        doc = {"text": text, "lang": lang, "lang_score": round(score, 4)}
        if cfg.quality.model:
            stage = "quality"
            stats.saw("quality", size)
            q = clock.run("quality", quality_score, cfg.quality.model, text)
            doc["quality"] = round(q, 4)
            if not _quality_keeps(cfg.quality, doc_id, q):
                drop("quality", f"{cfg.quality.mode} rule", quality=doc["quality"])
                return None
            stats.kept("quality", size)
        p = cfg.pii
        if p.emails or p.ips:
            stage = "pii"
            stats.saw("pii", size)
            doc["text"], found = clock.run("pii", redact, text, p.emails, p.ips)
            if found:
                doc["pii"] = dict(sorted(found.items()))
                stats.redacted("pii", found)
            stats.kept("pii", nbytes(doc["text"]))
        return doc
    except Exception as exc:
        drop(stage, f"{stage} failed ({type(exc).__name__})", error=str(exc)[:200])
        return None


def _quality_keeps(q, doc_id: str, score: float) -> bool:
    if q.mode == "pareto":
        return pareto_keep(doc_id, score, q.alpha, q.seed)
    return score >= q.threshold


@lru_cache(maxsize=2)
def _decontaminator(paths: tuple, field: str, ngram: int, margin: int, min_piece: int, max_pieces: int
                    ) -> Decontaminator:
    texts = (text for path in paths for text in benchmark_texts(path, field))
    return Decontaminator(texts, ngram, margin, min_piece, max_pieces)


def finalize_shard(cfg: CorpusConfig, index: int, duplicates: dict, sample_below: Optional[int]) -> None:
    """Drop this shard's duplicates, cut benchmark overlaps; write its final documents and drops, and set aside
    those whose sample key is under sample_below (tokens.sample_bound; None: none)."""
    out, name = cfg.output.dir, shard_name(index)
    d = cfg.decontam
    decon = _decontaminator(tuple(d.paths), d.text_field, d.ngram, d.margin_chars, d.min_piece_chars,
                            d.max_pieces) if d.paths else None
    kept, dup_drops, decon_drops = [], [], []
    cut_docs = {"cut": 0, "pieces": 0, "short_pieces_dropped": 0}  # documents decontamination cut and kept
    for doc in read_jsonl_gz(os.path.join(out, "work", "process", f"{name}.jsonl.gz")):
        dup = duplicates.get(doc["id"])
        if dup:
            dup_drops.append({"id": doc["id"], "record_id": doc["record_id"], "url": doc["url"], **dup})
            continue
        if decon is None:
            kept.append(doc)
            continue
        pieces, reason, hits, made = decon.clean(doc["text"])
        if reason:
            decon_drops.append({"id": doc["id"], "record_id": doc["record_id"], "url": doc["url"],
                                "stage": "decontam", "reason": reason,
                                "benchmark_ngrams": hits, "pieces": made})
            continue
        cut = {"benchmark_ngrams": hits, "pieces": made, "short_pieces_dropped": made - len(pieces)} if hits else {}
        if hits:
            cut_docs["cut"] += 1
            cut_docs["pieces"] += made
            cut_docs["short_pieces_dropped"] += made - len(pieces)
        for k, piece in enumerate(pieces):
            piece_id = doc["id"] if len(pieces) == 1 else f"{doc['id']}#{k}"
            kept.append({**doc, "id": piece_id, "text": piece, **cut})
    level, seed = cfg.output.gzip_level, cfg.tokenize.train_sample_seed
    if sample_below is None:  # no bound: the tokenizer reads every document (a file from another bound must go)
        with contextlib.suppress(FileNotFoundError):
            os.remove(sample_candidates_path(cfg, name))
    else:  # the bound heads the file: candidates are believed only all under the same one
        write_jsonl_gz(sample_candidates_path(cfg, name), [{"below": sample_below}] +
                       [{"id": d["id"], "text": d["text"]} for d in kept if sample_key(seed, d["id"]) < sample_below],
                       level)
    write_json(os.path.join(out, "work", "finalize", f"{name}.json"), cut_docs)
    write_jsonl_gz(os.path.join(out, "documents", cfg.input.source, f"{name}.jsonl.gz"), kept, level)
    write_jsonl_gz(os.path.join(out, "dropped", "dedup", f"{name}.jsonl.gz"), dup_drops, level)
    write_jsonl_gz(os.path.join(out, "dropped", "decontam", f"{name}.jsonl.gz"), decon_drops, level)


def sample_candidates_path(cfg: CorpusConfig, name: str) -> str:
    """Shard `name`'s documents that may be in the tokenizer's training sample."""
    return os.path.join(cfg.output.dir, "work", "finalize", f"{name}.sample.jsonl.gz")


@lru_cache(maxsize=2)
def _tokenizer(path: str, stamp: tuple):
    """A worker tokenizes shard after shard with one tokenizer: read it once. stamp (mtime, size)
    makes a tokenizer retrained at the same path (a restarted run in this process) read anew."""
    from megagpt.data.tokenizer import Tokenizer

    return Tokenizer.load(path)


def tokenize_shard(cfg: CorpusConfig, index: int, tokenizer_path: str) -> None:
    from megagpt.data.shards import write_shard

    out, name = cfg.output.dir, shard_name(index)
    docs = (d["text"] for d in read_jsonl_gz(os.path.join(out, "documents", cfg.input.source, f"{name}.jsonl.gz")))
    stat = os.stat(tokenizer_path)
    counts = write_shard(os.path.join(out, "work", "tokens", name), docs,
                         _tokenizer(tokenizer_path, (stat.st_mtime_ns, stat.st_size)))
    write_json(os.path.join(out, "work", "tokens", f"{name}.counts.json"), counts)
