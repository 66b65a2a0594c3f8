"""Reading crawl files into records: WARC responses and resources (HTML), WET conversions (text), JSONL, text.

A .gz WARC is decompressed member by member here (_GzipMembers), where fastwarc's own reader stops silently
at a cut member; each record's block is checked against its Content-Length and the file's last bytes
against the last record, so a cut anywhere is reported (a file error) and a cut record is a counted drop,
never a document. A damaged file is reported, never fatal: the records before the damage are still
processed, after a corrupt member those of the next one, and after damage fastwarc cannot read past (a
wrong Content-Length, junk between records) those from the next record's first line on.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import re
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import brotli

from megagpt.errors import ConfigError
from megagpt.files import gzipped


@dataclass
class Record:
    """One record of an input file. `index` (its place in the file: WARC record ordinal from 0, counting
    every record, JSONL line number) makes the document's run id; `record_id` (WARC-Record-ID, a JSONL "id")
    is only a field, since the same record can arrive twice (copies, overlapping globs)."""

    index: int
    record_id: Optional[str]
    url: Optional[str]
    kind: str  # "html" (WARC response or resource: judged by content_type) or "text" (WET conversion, JSONL)
    payload: object  # bytes (WARC), str (JSONL text), or whatever a JSONL "text" held (judged by extract)
    content_type: str = ""
    # A record that is there but cannot be read (a malformed JSONL line, a cut WARC record): why, as a reason
    # to count by, and where exactly. The read stage drops it, so it is counted and listed in dropped/.
    unreadable: Optional[str] = None
    detail: str = ""
    charset: Optional[str] = None  # what the HTTP Content-Type declares
    crawler_cut: Optional[str] = None  # WARC-Truncated: why the crawler stored only part of it (length, time...)


@dataclass
class ReadError:
    file: str
    reason: str


@dataclass
class Skipped:
    """A WARC record that holds no document (request, metadata, warcinfo, revisit...): counted, not dropped."""

    reason: str


# .json.gz: C4's and Dolma's shards are JSON lines under that name
INPUT_SUFFIXES = {".warc": "warc", ".warc.gz": "warc", ".wet": "warc", ".wet.gz": "warc", ".jsonl": "jsonl",
                  ".jsonl.gz": "jsonl", ".json.gz": "jsonl", ".ndjson": "jsonl", ".ndjson.gz": "jsonl", ".txt": "txt"}


def input_kind(path: str) -> str:
    """How an input is read, told by its name in any case (a .JSONL file was read as a WARC: every record lost to
    "Invalid WARC header"), else by its first bytes where they are a WARC record's (a download's .warc.gz.1, a
    plain .gz); anything else is refused, not guessed at."""
    name = os.path.basename(path).lower()
    for suffix, kind in INPUT_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    if _starts_a_warc(path):
        return "warc"
    raise ConfigError(f"{path}: an input is named .warc[.gz] or .wet[.gz] (WARC, or holds one under another name), "
                      f".jsonl[.gz], .ndjson[.gz] or .json.gz (a document per line) or .txt (one document); name the "
                      f"file by what it holds")


def _starts_a_warc(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(64 << 10)
        if head.startswith(_GzipMembers.MAGIC):
            head = zlib.decompressobj(wbits=47).decompress(head, 16)
    except (OSError, zlib.error):
        return False
    return head.startswith(b"WARC/")


def read_file(path: str) -> Iterator[Union[Record, ReadError, Skipped]]:
    kind = input_kind(path)
    try:
        if os.path.getsize(path) == 0:  # said alike for every format (a failed download leaves one)
            yield ReadError(path, "empty file: no records")
        elif kind == "jsonl":
            yield from _read_jsonl(path)
        elif kind == "txt":
            with open(path, "rb") as f:
                yield Record(0, None, None, "text", f.read())
        else:
            yield from _read_warc(path)
    except OSError as exc:
        yield ReadError(path, f"unreadable: {exc}")


class _Stream:
    """The (decompressed) bytes handed to fastwarc, counted, with the last `window` bytes kept: the tail from the
    last record on is checked without reading the file twice, and reading can start again at a kept offset
    (rewind) after damage."""

    def __init__(self, raw, window: int = 8 << 20):
        self.raw, self.window, self.total, self.kept, self.kept_bytes = raw, window, 0, collections.deque(), 0
        self.replay = b""  # bytes handed on once, to hand on again (after a rewind)

    def read(self, n: int = -1) -> bytes:
        if self.replay:
            data, self.replay = (self.replay, b"") if n < 0 or n >= len(self.replay) else \
                (self.replay[:n], self.replay[n:])
        else:
            data = self.raw.read(n)
        self.total += len(data)
        self.kept.append(data)
        self.kept_bytes += len(data)
        while len(self.kept) > 1 and self.kept_bytes - len(self.kept[0]) >= self.window:
            self.kept_bytes -= len(self.kept.popleft())
        return data

    def tell(self) -> int:
        return self.total

    def first_kept(self) -> int:
        return self.total - self.kept_bytes

    def _since(self, offset: int) -> tuple[bytes, int]:
        """The kept bytes from the chunk that holds `offset` on, and that chunk's offset: joined from there, not
        from the window's start (a file damaged at every record would copy the whole window each time)."""
        chunks, at = [], self.total
        for chunk in reversed(self.kept):
            chunks.append(chunk)
            at -= len(chunk)
            if at <= offset:
                break
        return b"".join(reversed(chunks)), at

    def tail(self, offset: int) -> Optional[bytes]:
        """The bytes from `offset` to the end (once read), or None where they were not all kept."""
        if offset < self.first_kept():
            return None
        data, at = self._since(offset)
        return data[offset - at:]

    def find(self, pattern, offset: int) -> Optional[int]:
        """The offset of the first match of `pattern` (a compiled bytes regex) at or after `offset` (or the first
        byte kept, if later), reading on as far as needed; None where none is left."""
        offset = max(offset, self.first_kept())
        buf, at = self._since(offset)
        start = offset - at
        while True:
            found = pattern.search(buf, start)
            if found:  # (kept still: the window holds more than one read)
                return at + found.start()
            more = self.read(1 << 20)
            if not more:
                return None
            drop = max(0, len(buf) - 64)  # a match may straddle the old end
            buf, at, start = buf[drop:] + more, at + drop, max(0, start - drop)

    def rewind(self, offset: int) -> None:
        """Hand on the bytes from `offset` (kept) again."""
        data, at = self._since(offset)
        while self.kept and self.total - len(self.kept[-1]) >= at:  # the chunks joined into data
            self.total -= len(self.kept[-1])
            self.kept_bytes -= len(self.kept.pop())
        cut = offset - at
        self.replay = data[cut:] + self.replay
        if cut:
            self.kept.append(data[:cut])
            self.kept_bytes += cut
        self.total = offset


class _GzipMembers:
    """A gzip file's members decompressed one by one. A member's bytes are handed on once zlib has checked its
    CRC (CommonCrawl writes one member per record), or as they come past `hold` bytes (a whole-file gzip,
    checked at its end only); a corrupt member is dropped and reading goes on at the next member header (past
    `hold`, whose bytes went on unchecked, reading stops there); a cut at the end hands on what was there, for
    the record length check to catch.
    Written out because gzip.GzipFile hands on a member's bytes before its CRC fails and stops at the damage."""

    MAGIC = b"\x1f\x8b\x08"

    def __init__(self, raw, hold: int = 64 << 20, chunk: int = 64 << 10):
        self.raw, self.hold, self.chunk = raw, hold, chunk
        self.problems: list[str] = []  # damage before the end
        self.cut_at: Optional[int] = None  # where the member that the end of the file cuts short starts
        self.ready, self.held, self.held_bytes, self.released = bytearray(), [], 0, False
        self.pending = b""  # compressed bytes read but not yet given to zlib
        self.start = self.offset = 0  # compressed offsets: the current member's start, the end of what was read
        self.d, self.done = None, False  # d: the current member's decompressor (None: between members)

    def read(self, n: int = -1) -> bytes:
        while not self.done and (n < 0 or len(self.ready) < n):
            self._step()
        n = len(self.ready) if n < 0 else n
        out = bytes(self.ready[:n])
        del self.ready[:n]
        return out

    def _release(self) -> None:
        for part in self.held:
            self.ready += part
        self.held, self.held_bytes = [], 0

    def _more(self) -> bytes:
        data = self.raw.read(self.chunk)
        self.offset += len(data)
        return data

    def _step(self) -> None:
        if self.d is None:  # a member starts here, with the magic, or what follows is damage or junk
            while len(self.pending) < len(self.MAGIC) and (more := self._more()):
                self.pending += more
            if not self.pending:
                self.done = True
            elif self.pending.startswith(self.MAGIC):
                self.d, self.released = zlib.decompressobj(wbits=31), False
            else:
                self._resync(self.start + 1, f"at byte {self.start} no gzip member starts")
            return
        data = self.pending or self._more()
        self.pending = b""
        if not data:
            self.cut_at = self.start
            self._release()
            self.done = True
            return
        try:
            part = self.d.decompress(data)
        except zlib.error as exc:
            self.held, self.held_bytes = [], 0
            if self.released:  # its first bytes were handed on unchecked: what follows them would be misread
                self.problems.append(f"corrupt gzip member at byte {self.start} ({exc}), over {self.hold} bytes "
                                     f"long: the rest of the file is not read")
                self.done = True
            else:
                self._resync(self.start + 1, f"corrupt gzip member at byte {self.start} ({exc})")
            return
        self.held.append(part)
        self.held_bytes += len(part)
        if self.d.eof:
            self._release()
            self.pending = self.d.unused_data
            self.start, self.d = self.offset - len(self.pending), None
        elif self.held_bytes > self.hold:
            self._release()
            self.released = True

    def _resync(self, after: int, problem: str) -> None:
        """Go on at the next member header from compressed offset `after`; `problem` is reported with how much
        was skipped (or, with no member after it, as what ends the file)."""
        self.raw.seek(after)
        carry, at = b"", after
        while block := self.raw.read(1 << 20):
            found = (carry + block).find(self.MAGIC)
            if found >= 0:
                skipped_to = at - len(carry) + found
                self.problems.append(f"{problem}: bytes {self.start}-{skipped_to} skipped, their records lost")
                self.raw.seek(skipped_to)
                self.start = self.offset = skipped_to
                self.pending, self.d = b"", None
                return
            carry, at = block[-2:], at + len(block)
        self.problems.append(f"{problem}: the {at - self.start} bytes from there to the end are not gzip")
        self.done = True


_CONTENT = ("response", "resource", "conversion")


def _read_warc(path: str) -> Iterator[Union[Record, ReadError, Skipped]]:
    from fastwarc.warc import ArchiveIterator

    with open(path, "rb") as f:
        head = f.read(5)  # by content: a plain WARC named .gz happens, and a damaged first member header
        compressed = head.startswith(_GzipMembers.MAGIC) or path.endswith(".gz") and not head.startswith(b"WARC/")
        f.seek(0)
        members = _GzipMembers(f) if compressed else None
        stream = _Stream(members or f)
        last_pos, count, damage, resumed = None, 0, None, []
        held, start = None, 0  # the last record read, given out once the next one is read; where reading started
        while True:
            problem = None
            try:
                for rec in ArchiveIterator(stream, parse_http=False, stream_detect=False):
                    if held:
                        yield held[0]
                    index, last_pos, count = count, rec.stream_pos, count + 1  # from tell()
                    held = (_content(rec, index), last_pos, rec.content_length)
            except OSError as exc:  # fastwarc's: it cannot go on, so a new iterator starts at the next record
                problem = f"unreadable ({exc})"
            cut_short = held and isinstance(held[0], Record) and held[0].unreadable == "truncated record"
            if problem is None and not cut_short:
                break
            # a record whose length runs past the file's end may be one whose Content-Length is wrong: the records
            # after it were read as its block
            after, wrong = _next_record_from(stream, held, max(start, last_pos if last_pos is not None else -1) + 1)
            found = stream.find(_RECORD_START, after)
            if found is None:
                damage = problem and f"{problem} after {count} records"
                break
            if wrong:
                held = (_wrong_length(held[0], held[2]), *held[1:])
            resumed.append(f"{problem or 'a Content-Length past the end of the file'} after {count} records: read "
                           f"on from the next record, at {'decompressed ' if members else ''}byte {found}")
            stream.rewind(found)
            start = found
        if held:
            yield held[0]
    if len(resumed) > _RESUMES_SAID:
        resumed[_RESUMES_SAID:] = [f"and {len(resumed) - _RESUMES_SAID} more places where reading went on past damage"]
    for problem in (members.problems if members else []) + resumed:
        yield ReadError(path, problem)
    if members and members.cut_at is not None:
        damage = f"truncated gzip after {count} records (the member from byte {members.cut_at} is cut short)"
    elif damage is None and not (members and members.problems):
        damage = _tail_damage(stream.tail(last_pos or 0), path, compressed, last_pos)
        damage = damage and f"{damage} after {count} records"
    if damage:
        yield ReadError(path, damage)


# A WARC record's first line: where reading goes on after damage. (No `^`: a search may begin mid-line.)
_RECORD_START = re.compile(rb"(?<=\n)WARC/\d\.\d+\r?\n")
_RESUMES_SAID = 10  # a file damaged at every record says so in this many lines and a count


def _next_record_from(stream: _Stream, held, after: int) -> tuple[int, bool]:
    """Where to look for the next record after damage, and whether the record before it (held) is the damage: a
    record whose block ends in the blank line that ends a record is whole, and the next one starts after it;
    else its Content-Length is wrong, and the next record may start inside what it claims (too long)."""
    if not held or not isinstance(held[0], (Record, Skipped)):
        return after, False
    _, pos, length = held
    tail = stream.tail(pos)
    if tail is None:  # too far back to check: believed, as before
        return after, False
    header = tail.find(b"\r\n\r\n") + 4
    end = header + length
    if header >= 4 and tail[end:end + 4] == b"\r\n\r\n":
        return max(after, pos + end + 4), False
    return max(after, pos + max(header, 1)), isinstance(held[0], Record)


def _wrong_length(record: Record, length: int) -> Record:
    return Record(record.index, record.record_id, record.url, record.kind, record.payload, record.content_type,
                  unreadable="wrong Content-Length",
                  detail=f"its {length} bytes do not end where the record does: its text would be cut or run on")


def _content(rec, index: int) -> Union[Record, Skipped]:
    """The record as a document to judge, a counted drop (cut short, undecodable), or a counted skip."""
    kind = str(rec.record_type)
    if kind not in _CONTENT:
        return Skipped(f"{kind} record")
    rid, url = rec.record_id or None, rec.headers.get("WARC-Target-URI")
    block = rec.reader.read()

    def unreadable(why: str, detail: str) -> Record:
        return Record(index, rid, url, "html", block, unreadable=why, detail=detail)

    if len(block) < rec.content_length:
        return unreadable("truncated record", f"{len(block)} of its {rec.content_length} bytes")
    # CommonCrawl stores at most 1 MiB of a page: such a page is kept (its main text mostly lies within), named
    cut = rec.headers.get("WARC-Truncated") or None
    if kind == "conversion":
        return Record(index, rid, url, "text", block, rec.headers.get("Content-Type", "text/plain").lower(),
                      crawler_cut=cut)
    # some crawlers leave out `Content-Type: application/http`: their HTTP headers were read as page text
    if rec.is_http or kind == "response" and block.startswith(b"HTTP/"):
        try:
            body, http = _http_body(block, cut=bool(cut))
        except (OSError, zlib.error, brotli.error) as exc:
            return unreadable("undecodable HTTP body", str(exc)[:200])
        ctype, charset = (http.http_content_type or "").lower(), http.http_charset
    else:
        body, charset = block, None
        ctype = rec.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if kind == "resource" and ctype.startswith("text/plain"):
        return Record(index, rid, url, "text", body, ctype, crawler_cut=cut)
    return Record(index, rid, url, "html", body, ctype, charset=charset, crawler_cut=cut)


_HTTP_RECORD = b"WARC/1.0\r\nWARC-Type: response\r\nContent-Type: application/http; msgtype=response\r\n" \
    b"Content-Length: %d\r\n\r\n"


def _http_body(block: bytes, cut: bool = False):
    """(payload, parsed record) of an HTTP response block: chunked transfer and gzip/deflate/br content encodings
    undone (fastwarc), raw deflate too (sent as "deflate" by many servers; browsers read it), header lines ended by
    LF alone read as browsers read them. A body the crawler cut (`cut`: WARC-Truncated) is decoded as far as it
    goes. Parsed in a record of its own: a decoding error in the iterator's record leaves the iterator unable to go
    on."""
    from fastwarc.warc import WarcRecord

    def parsed(decode: str):
        http = WarcRecord.from_bytes(_HTTP_RECORD % len(block) + block + b"\r\n\r\n")
        http.parse_http(auto_decode=decode, quirks_mode=True)
        return http.reader.read(), http

    try:
        return parsed("all")
    except OSError:
        try:
            body, http = parsed("transfer")
        except OSError:  # a chunked body cut short, or one stored de-chunked under its Transfer-Encoding header
            body, http = parsed("none")
            if cut:
                body = _dechunk(body)
            elif _CHUNK_SIZE.match(body):
                raise
            # no chunk size line begins it: the body as stored (several WARC writers de-chunk and keep the header;
            # warcio reads such a body as it is)
        coding = http.http_headers.get("Content-Encoding", "").strip().lower()
        if coding in ("gzip", "x-gzip", "deflate", "x-deflate"):  # RFC 9110: x-gzip is gzip
            inflate = zlib.decompressobj(wbits=47 if "gzip" in coding else -15)
            body = inflate.decompress(body)
            if not (inflate.eof or cut):
                raise zlib.error("the compressed body ends early")
            return body, http
        if coding == "br" and cut:
            return brotli.Decompressor().process(body), http  # as far as the cut body goes
        if coding in ("br", "zstd", "compress", "x-compress"):
            raise
        return body, http  # a label that is no coding ("none", "utf-8", "identity"): the body as sent


_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]+[ \t]*(;[^\r\n]*)?\r?\n")


def _dechunk(body: bytes) -> bytes:
    """The data of a chunked body, as far as it goes (fastwarc refuses a cut one)."""
    out, pos = [], 0
    while (end := body.find(b"\r\n", pos)) >= 0:
        try:
            size = int(body[pos:end].split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out.append(body[end + 2:end + 2 + size])
        pos = end + 2 + size + 2
    return b"".join(out)


def _tail_damage(tail: Optional[bytes], path: str, compressed: bool, last_pos: Optional[int]) -> Optional[str]:
    """None if the (decompressed) bytes from the last record read to the end are that whole record, else what is
    wrong. `tail` None: more than the window; then read again from the file."""
    if tail is None:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            f.seek(last_pos or 0)
            tail = f.read()
    if last_pos is None:
        return "no WARC record" if tail.strip() else None
    header_end = tail.find(b"\r\n\r\n")
    length = None
    for line in tail[:max(header_end, 0)].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            try:
                length = int(line.split(b":", 1)[1])
            except ValueError:
                return f"the last record's Content-Length is {line.split(b':', 1)[1].strip()[:20].decode(errors='replace')!r}"
    if header_end < 0 or length is None or len(tail) < header_end + 4 + length:
        return "truncated WARC record"
    rest = tail[header_end + 4 + length:].strip(b"\r\n")
    if rest:
        return f"{len(rest)} bytes after the last record are not a WARC record"
    return None


def _read_jsonl(path: str) -> Iterator[Union[Record, ReadError]]:
    opener = gzip.open if gzipped(path) else open  # by content, as WARC files are
    records = 0
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                records += 1
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
    except EOFError as exc:
        yield ReadError(path, f"truncated gzip ({exc})")
    except (zlib.error, gzip.BadGzipFile) as exc:
        yield ReadError(path, f"corrupt gzip ({exc})")
    else:
        if not records:
            yield ReadError(path, "no records: only blank lines")


def iter_texts(paths: list[str]) -> Iterator[str]:
    """The extracted text of every readable record in `paths` (for training classifiers)."""
    from data_pipeline.extract import extract_text

    for path in paths:
        for item in read_file(path):
            if isinstance(item, Record) and not item.unreadable:  # a cut or undecodable record is no example
                text, _ = extract_text(item)
                if text:
                    yield text
