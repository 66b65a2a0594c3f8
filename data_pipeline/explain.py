"""`megagpt corpus explain --run DIR --id ID`: one document's path through a corpus run.

Reads only what the run wrote, never the inputs: run.json says which input (so which shard)
the id names; the shard's drops (dropped/process, dropped/dedup, dropped/decontam), its
processed documents (work/process) and its kept documents say where the document went. A
duplicate's cluster is its kept document and every dedup drop of the run naming that document
in `duplicate_of` (dedup always names the cluster's kept one), so nothing beyond the drop
records needs storing.
"""

from __future__ import annotations

import glob
import os
from typing import Optional

from data_pipeline.io import read_jsonl_gz
from data_pipeline.readers import input_kind
from data_pipeline.runs import RECORD, read_record
from data_pipeline.stages import shard_name
from megagpt.errors import DataError

STAGES = ("read", "url", "extract", "langid", "filters", "quality", "pii", "dedup", "decontam", "tokenize")
_IDENTITY = ("id", "record_id", "url", "stage", "reason")


def _unit(path: str) -> tuple[str, int]:
    """What a document id's index counts in this input, and its first value: a JSONL file's line numbers (from 1,
    as data_pipeline.readers numbers them), else its records (from 0)."""
    return ("line", 1) if input_kind(path) == "jsonl" else ("record", 0)


def _split_piece(doc_id: str) -> tuple[str, str]:
    """(<input>:<index>, piece or ""): a piece is the trailing #k that decontamination adds, and an input's name may
    hold a # of its own (cc#1.warc.gz:0)."""
    base, hash_, piece = doc_id.rpartition("#")
    return (base, piece) if hash_ and piece.isdigit() and base.rpartition(":")[2].isdigit() else (doc_id, "")


def explain(run_dir: str, doc_id: str) -> list[str]:
    """The lines `corpus explain` prints: a header, then one verdict per stage (and a cluster for duplicates)."""
    record = read_record(run_dir)
    if record is None:
        raise DataError(f"{run_dir} is not a corpus run: no {RECORD} there")
    base, piece = _split_piece(doc_id)
    prefix, colon, index = base.rpartition(":")
    if not colon or not index.isdigit():
        first = record["inputs"][0]
        raise DataError(f"{doc_id!r} is not a document id (<input path>:<record index>[#piece], "
                        f"e.g. {first['id_prefix']}:{_unit(first['path'])[1]})")
    shard = next((i for i, e in enumerate(record["inputs"]) if e["id_prefix"] == prefix), None)
    if shard is None:
        raise DataError(f"{doc_id!r}: no input {prefix!r} in the run at {run_dir}")
    unit, first_index = _unit(record["inputs"][shard]["path"])
    name, source = shard_name(shard), record["config"]["input.source"]
    files = {"process": _path(run_dir, "dropped", "process", name), "dedup": _path(run_dir, "dropped", "dedup", name),
             "decontam": _path(run_dir, "dropped", "decontam", name), "kept": _path(run_dir, "documents", source, name),
             "processed": _path(run_dir, "work", "process", name)}
    if not os.path.isfile(files["process"]):
        raise DataError(f"{doc_id!r}: the run at {run_dir} has not processed {prefix} yet")
    header = [f"{doc_id}  (input {record['inputs'][shard]['path']}, {unit} {index})"]
    drop = _find(files["process"], base)
    if drop:
        _whole(doc_id, piece, drop)
        return header + _identity(drop) + _until(drop["stage"], record["config"], None) + \
            [_line(drop["stage"], f"dropped: {drop['reason']}{_fields(drop, _IDENTITY)}")] + _after(drop["stage"])
    doc = _find(files["processed"], base)
    if doc is None:
        why = ("a JSONL document's index is its line number, from 1" if int(index) < first_index else
               f"fewer {unit}s, or lost to damage the run reported in stats.json" +
               (", or a record that holds no page (request, metadata, revisit, warcinfo: counted in stats.json as "
                "the read stage's skipped)" if unit == "record" else ""))
        raise DataError(f"{doc_id!r}: no such document in the run at {run_dir} ({prefix} has no {unit} {index}: "
                        f"{why})")
    lines = header + _identity(doc) + _until("dedup", record["config"], doc)
    if not os.path.isfile(files["dedup"]):
        return lines + [_line("dedup", "not run yet")]
    dup = _find(files["dedup"], base)
    if dup:
        _whole(doc_id, piece, dup)
        return lines + _duplicate(run_dir, dup) + _after("dedup")
    if not record["config"].get("dedup.enabled", True):
        lines.append(_line("dedup", "off"))
    else:
        lines += [_line("dedup", "kept")] + _cluster(run_dir, base, None)
    decon = _find(files["decontam"], base)
    if decon:
        _whole(doc_id, piece, decon)
        return lines + [_line("decontam", f"dropped: {decon['reason']}{_fields(decon, _IDENTITY)}")] + _after("decontam")
    pieces = [(n, d) for n, d in enumerate(read_jsonl_gz(files["kept"]), 1) if _split_piece(d["id"])[0] == base]
    if piece and not any(d["id"] == doc_id for _, d in pieces):
        raise DataError(f"{doc_id!r}: {base} was not split into a piece #{piece} (it has {len(pieces)} piece(s))")
    if not record["config"]["decontam.paths"]:
        lines.append(_line("decontam", "off"))
    elif pieces and "pieces" in pieces[0][1]:
        d = pieces[0][1]
        short = f", {d['short_pieces_dropped']} under the minimum length dropped" if d["short_pieces_dropped"] else ""
        lines.append(_line("decontam", f"cut around {d['benchmark_ngrams']} benchmark n-gram(s) into {d['pieces']} "
                                       f"piece(s): {len(pieces)} kept{short}"))
    elif len(pieces) > 1:  # a run finalized before the pieces were recorded
        hits = pieces[0][1].get("benchmark_ngrams", 0)
        lines.append(_line("decontam", f"split into {len(pieces)} pieces around {hits} benchmark n-gram(s)"))
    else:
        lines.append(_line("decontam", "kept"))
    where = f"documents/{source}/{name}.jsonl.gz"
    for n, d in pieces:
        if not piece or d["id"] == doc_id:
            lines.append(_line("tokenize", f"kept: {d['id']} is line {n} of {where}, in tokens/{source}.bin/.idx"))
    return lines


def _whole(doc_id: str, piece: str, drop: dict) -> None:
    """A piece id (#k) names a part of a kept document; one dropped whole has none."""
    if piece:
        raise DataError(f"{doc_id!r}: {drop['id']} was dropped whole at {drop['stage']} ({drop['reason']}), "
                        f"so it has no piece #{piece}")


def _path(run_dir: str, *parts: str) -> str:
    return os.path.join(run_dir, *parts) + ".jsonl.gz"


def _find(path: str, doc_id: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    return next((d for d in read_jsonl_gz(path) if d["id"] == doc_id), None)


def _line(stage: str, verdict: str) -> str:
    return f"  {stage:<9} {verdict}"


def _fields(record: dict, leave_out) -> str:
    shown = {k: v for k, v in record.items() if k not in leave_out}
    return f" ({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else ""


def _identity(record: dict) -> list[str]:
    return [f"  record_id {record.get('record_id')}, url {record.get('url')}"]


def _until(stage: str, config: dict, doc: Optional[dict]) -> list[str]:
    """'passed' for the stages before `stage`, with the scores a processed document carries."""
    lines = []
    for s in STAGES[:STAGES.index(stage)]:
        if s == "langid" and doc:
            lines.append(_line(s, f"passed ({doc['lang']}, score {doc['lang_score']})"))
        elif s == "url" and not config.get("url.blocklists"):  # off, or a run from before the stage
            lines.append(_line(s, "off"))
        elif s == "pii" and not (config.get("pii.emails") or config.get("pii.ips")):
            lines.append(_line(s, "off"))
        elif s == "pii" and doc and doc.get("pii"):
            lines.append(_line(s, "replaced " + ", ".join(f"{n} {kind[:-1] if n == 1 else kind}"
                                                          for kind, n in doc["pii"].items())))
        elif s == "pii" and doc:
            lines.append(_line(s, "passed (nothing replaced)"))
        elif s == "quality" and not config["quality.model"]:
            lines.append(_line(s, "off"))
        elif s == "quality" and doc and "quality" in doc:
            lines.append(_line(s, f"passed (score {doc['quality']})"))
        else:
            lines.append(_line(s, "passed"))
    return lines


def _after(stage: str) -> list[str]:
    return [_line(s, "not reached") for s in STAGES[STAGES.index(stage) + 1:]]


def _duplicate(run_dir: str, dup: dict) -> list[str]:
    kept = dup["duplicate_of"]
    lines = [_line("dedup", f"dropped: {dup['reason']} ({dup['stage']}) of {kept}, "
                            f"estimated Jaccard similarity {dup.get('similarity')}")]
    if dup.get("duplicate_of_record_id") or dup.get("duplicate_of_url"):
        lines.append(f"{'':12}kept document: record_id {dup.get('duplicate_of_record_id')}, "
                     f"url {dup.get('duplicate_of_url')}")
    if "copy_of" in dup:
        lines.append(f"{'':12}an exact copy of {dup['copy_of']}, itself a near duplicate of {kept}")
    if "matched" in dup:
        lines.append(f"{'':12}joined the cluster through {dup['matched']['id']} "
                     f"(estimated Jaccard similarity {dup['matched']['similarity']})")
    return lines + _cluster(run_dir, kept, dup["id"])


def _cluster(run_dir: str, kept: str, this: Optional[str]) -> list[str]:
    """The cluster whose kept document is `kept`: every dedup drop of the run that names it."""
    members = [d for path in sorted(glob.glob(os.path.join(run_dir, "dropped", "dedup", "*.jsonl.gz")))
               for d in read_jsonl_gz(path) if d.get("duplicate_of") == kept]
    if not members:
        return []
    lines = [f"{'':12}cluster of {len(members) + 1}: {kept} kept" + (" (this document)" if this is None else "")]
    for d in members:
        mark = " (this document)" if d["id"] == this else ""
        lines.append(f"{'':14}{d['id']} dropped{mark}: {d['reason']}, "
                     f"estimated Jaccard similarity {d.get('similarity')} to {kept}")
    return lines
