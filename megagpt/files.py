"""What a file holds, as hashes: the whole of it, or (cheaply, for large inputs) its size and edges; which of a list
of shard prefixes names the same files twice; the lines of a JSONL file, gzip or not, and whether a JSON value's strings
are text; a file that cannot be written, in one line."""

from __future__ import annotations

import codecs
import errno
import gzip
import hashlib
import json
import os
import zlib
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional

from megagpt.errors import DataError, StorageError

EDGE_BYTES = 1 << 20
# what a write into a directory the run could create can still meet: a full disk, a quota, a file too large
# (RLIMIT_FSIZE), a read-only file system, an I/O error
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def edges_fingerprint(path: str) -> dict:
    """Size and a hash of the first and last MiB: catches a replaced or rewritten file without reading all of it."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            digest.update(f.read())
    return {"size": size, "edges_sha256": digest.hexdigest()}


def first_repeat(items: Iterable) -> Optional[tuple[int, int]]:
    """(i, j) for the first item j that equals an earlier item i, else None."""
    seen: dict = {}
    for j, item in enumerate(items):
        i = seen.setdefault(item, j)
        if i != j:
            return i, j
    return None


def gzipped(path: str) -> bool:
    """Whether a file is gzip by its first bytes, whatever its name says (a plain file named .gz happens)."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def jsonl_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) for each non-blank line of a JSONL file, gzip or not by its first bytes: the one
    reader of megagpt's JSONL inputs. Bytes that are not UTF-8 and gzip that is corrupt or cut short are a DataError
    naming the file."""
    packed = gzipped(path)
    at = 0  # the line's first byte: a text-mode reader's UnicodeDecodeError counts from its decode chunk instead
    try:
        with (gzip.open if packed else open)(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):  # editors on Windows write one; JSON ignores it
                    at, raw = len(codecs.BOM_UTF8), raw[len(codecs.BOM_UTF8):]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {at + exc.start}"
                                    f"{' of the decompressed text' if packed else ''}: {exc.reason})") from None
                at += len(raw)
                if line.strip():
                    yield lineno, line
    except EOFError:
        raise DataError(f"{path}: truncated gzip (it ends before its last member does)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip ({exc})") from None


def check_utf8(value) -> None:
    """ValueError unless every string in a JSON value can be written as UTF-8: JSON reads the escape "\\ud800" as a
    lone surrogate, which no encoder takes (tokenizers raised a TypeError on it, far from the file and line)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"holds {exc.object[exc.start]!r}, a lone UTF-16 surrogate, which is not text") from None


def same_path(then: str, cwd_then: Optional[str], now: str) -> bool:
    """Whether a path a run wrote in cwd_then (None: not recorded) names what `now` names here: written alike (a moved
    project keeps its relative paths), or resolving to the same place (relative then, absolute now, or from another
    directory)."""
    if os.path.normpath(then) == os.path.normpath(now):
        return True
    return cwd_then is not None and os.path.realpath(os.path.join(cwd_then, then)) == os.path.realpath(now)


def file_identity(path: str):
    """What a path names, to tell the same file under two names: another spelling of the path, a link to its folder or
    to the file itself (a hard one too) give the same (device, inode). A file not there (yet): the path alone."""
    try:
        found = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return found.st_dev, found.st_ino


def same_shard_twice(prefixes: Iterable[str]) -> Optional[tuple[int, int]]:
    """first_repeat over the files the prefixes name (file_identity of each .bin)."""
    return first_repeat(file_identity(p + ".bin") for p in prefixes)


@contextmanager
def writing(path: str, *temporaries: str) -> Iterator[None]:
    """An OSError while the block writes `path` (through `temporaries`), such as a full disk's, becomes a StorageError
    naming `path` and the reason (a failed write() names no file, and torch's or numpy's writers none at all); one
    that names another file (a read) passes unchanged."""
    try:
        yield
    except OSError as exc:
        # a nameless OSError is the write's only if the file system raised it: a corrupt gzip read in the block
        # (gzip.BadGzipFile, an OSError with no errno) is the input's problem, not this file's
        if exc.filename not in (path, *temporaries) and not (exc.filename is None and exc.errno in STORAGE_ERRNOS):
            raise
        raise StorageError(f"{path} cannot be written ({exc.strerror or exc})") from None
