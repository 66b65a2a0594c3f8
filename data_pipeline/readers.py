"""Reading crawl files into records: WARC responses (HTML), WET conversions (text), JSONL, plain text.

fastwarc stops silently at a truncated gzip member, so after each .gz file we check
that the bytes after the last record it read form complete gzip members (only the tail
is decompressed again). A truncated or unreadable file is reported, never fatal: the
records before the damage are still processed.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional, Union


@dataclass
class Record:
    """One record of an input file. `index` (its place in the file: WARC record ordinal from 0,
    JSONL line number) makes the document's run id; `record_id` (WARC-Record-ID, a JSONL "id")
    is only a field, since the same record can arrive twice (copies, overlapping globs)."""

    index: int
    record_id: Optional[str]
    url: Optional[str]
    kind: str  # "html" (WARC response) or "text" (WET conversion, JSONL)
    payload: object  # bytes (WARC), str (JSONL text), or whatever a JSONL "text" held (judged by extract)
    content_type: str = ""
    # A record that is there but cannot be read (a malformed JSONL line): why, as a reason to count by, and
    # where exactly. The read stage drops it, so it is counted and listed in dropped/ like any other drop.
    unreadable: Optional[str] = None
    detail: str = ""


@dataclass
class ReadError:
    file: str
    reason: str


def read_file(path: str) -> Iterator[Union[Record, ReadError]]:
    name = os.path.basename(path)
    try:
        if os.path.getsize(path) == 0:  # said alike for every format (a failed download leaves one)
            yield ReadError(path, "empty file: no records")
        elif name.endswith((".jsonl", ".jsonl.gz")):
            yield from _read_jsonl(path)
        elif name.endswith(".txt"):
            with open(path, "rb") as f:
                yield Record(0, None, None, "text", f.read())
        else:
            yield from _read_warc(path)
    except OSError as exc:
        yield ReadError(path, f"unreadable: {exc}")


def _read_warc(path: str) -> Iterator[Union[Record, ReadError]]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    wanted = WarcRecordType.response | WarcRecordType.conversion | WarcRecordType.resource
    last_pos, count = 0, 0
    with open(path, "rb") as f:
        for rec in ArchiveIterator(f, record_types=wanted, parse_http=True):
            index, last_pos, count = count, rec.stream_pos, count + 1
            body = rec.reader.read()
            rid = rec.record_id or None
            url = rec.headers.get("WARC-Target-URI")
            if rec.record_type == WarcRecordType.response:
                ctype = (rec.http_headers.get("Content-Type", "") if rec.http_headers else "") or ""
                yield Record(index, rid, url, "html", body, ctype.lower())
            else:
                yield Record(index, rid, url, "text", body, rec.headers.get("Content-Type", "text/plain"))
    damage = _tail_damage(path, last_pos)
    if damage:
        yield ReadError(path, f"{damage} after {count} records")


def _tail_damage(path: str, offset: int) -> Optional[str]:
    """None if the file is whole from `offset` (the last record read) to its end."""
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read()
    if path.endswith(".gz"):
        while tail:
            d = zlib.decompressobj(wbits=31)
            try:
                d.decompress(tail)
            except zlib.error as exc:
                return f"corrupt gzip ({exc})"
            if not d.eof:
                return "truncated gzip"
            tail = d.unused_data
        return None
    header_end = tail.find(b"\r\n\r\n")
    length = None
    for line in tail[:header_end].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if header_end < 0 or length is None or len(tail) < header_end + 4 + length:
        return "truncated WARC record"
    return None


def _read_jsonl(path: str) -> Iterator[Union[Record, ReadError]]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                why, detail, obj = None, "", {}
                try:
                    obj = json.loads(line)
                except UnicodeDecodeError as exc:  # JSON text is UTF-8 (RFC 8259)
                    why, detail = "invalid utf-8", f"line {lineno}, byte {exc.start}: {exc.reason}"
                except json.JSONDecodeError as exc:
                    why, detail = "not JSON", f"line {lineno}, column {exc.colno}: {exc.msg}"
                else:
                    if not isinstance(obj, dict):
                        why, detail, obj = "not a JSON object", f"line {lineno}: a JSON {type(obj).__name__}", {}
                    elif "text" not in obj:
                        fields = ", ".join(sorted(obj)[:8]) or "none"
                        why, detail = "no 'text' field", f"line {lineno}: fields {fields}"
                rid, url = obj.get("id"), obj.get("url")
                yield Record(lineno, None if rid is None else str(rid), url if isinstance(url, str) else None, "text",
                             obj.get("text"), unreadable=why, detail=detail)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        yield ReadError(path, f"truncated gzip ({exc})")


def iter_texts(paths: list[str]) -> Iterator[str]:
    """The extracted text of every readable record in `paths` (for training classifiers)."""
    from data_pipeline.extract import extract_text

    for path in paths:
        for item in read_file(path):
            if isinstance(item, Record):
                text, _ = extract_text(item)
                if text:
                    yield text
