"""Writing Megatron .bin/.idx shards (megatron-core's IndexedDataset format) from text."""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
from itertools import chain, islice
from typing import Iterable, Iterator

import numpy as np

from megagpt.data.tokenizer import Tokenizer
from megagpt.errors import ConfigError, DataError
from megagpt.files import check_utf8, jsonl_lines, writing

# megatron-core's _IndexWriter: this header, version 1, then the token dtype's code
_INDEX_HEADER = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1)
_DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def write_shard(prefix: str, documents: Iterable[str], tokenizer: Tokenizer, batch_size: int = 512) -> dict:
    """Tokenize documents (each followed by EOD) into prefix.bin/.idx; returns counts.

    Each batch is encoded by `tokenizers` in one call and written as one array: no tensor or
    write per document. The files are byte-identical to megatron-core's IndexedDatasetBuilder
    adding each document as one sequence (tested); we write them with numpy because importing
    megatron-core pulls in torch, seconds per worker process, as long as tokenizing a shard.
    Written under temporary names and renamed, so a reader never sees half a shard.
    """
    tmp, dtype = prefix + ".tmp", np.dtype(token_dtype(tokenizer.vocab_size))
    lengths = []
    texts = (d for d in documents if d)
    try:
        with writing(prefix + ".bin", tmp + ".bin", os.path.dirname(os.path.abspath(prefix))):
            os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
            with open(tmp + ".bin", "wb") as f:
                while batch := list(islice(texts, batch_size)):
                    ids = tokenizer.encode_batch(batch)
                    for doc in ids:
                        doc.append(tokenizer.eod)
                    sizes = np.fromiter(map(len, ids), np.int64, len(ids))
                    f.write(np.fromiter(chain.from_iterable(ids), dtype, int(sizes.sum())).tobytes())
                    lengths.append(sizes)
        lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        with writing(prefix + ".idx", tmp + ".idx"):
            _write_index(tmp + ".idx", lengths, dtype)
    except BaseException:  # a bad document met halfway, a full disk (or Ctrl-C) leaves nothing behind
        for path in (tmp + ".bin", tmp + ".idx"):
            if os.path.exists(path):
                os.remove(path)
        raise
    with writing(prefix + ".bin", tmp + ".bin", tmp + ".idx", prefix + ".idx"):
        os.replace(tmp + ".bin", prefix + ".bin")
        os.replace(tmp + ".idx", prefix + ".idx")
    return {"documents": len(lengths), "tokens": int(lengths.sum())}


def _write_index(path: str, lengths: np.ndarray, dtype: np.dtype) -> None:
    """The .idx of documents of one sequence each: counts, lengths, byte offsets, document bounds."""
    pointers = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1] * dtype.itemsize, out=pointers[1:])
    with open(path, "wb") as f:
        f.write(_INDEX_HEADER + struct.pack("<B", _DTYPE_CODES[dtype]))
        f.write(struct.pack("<QQ", len(lengths), len(lengths) + 1))
        f.write(lengths.astype(np.int32).tobytes())
        f.write(pointers.tobytes())
        f.write(np.arange(len(lengths) + 1, dtype=np.int64).tobytes())


def merge_shards(parts: list[str], prefix: str) -> None:
    """The documents of write_shard's parts, in order, as one prefix.bin/.idx: the files megatron-core's
    IndexedDatasetBuilder.add_index gives (tested), streamed a part at a time. add_index holds every length,
    pointer and document bound in Python lists (about 120 bytes a document) and sums the pointers in a Python
    loop. Written under temporary names and renamed; a failed merge leaves no corpus-sized temporary behind."""
    codes = {code: dtype for dtype, code in _DTYPE_CODES.items()}
    heads = [_read_index_head(part + ".idx", codes) for part in parts]
    dtype, total = heads[0][0], sum(n for _, n in heads)
    for part, (other, _) in zip(parts, heads):
        if other != dtype:
            raise DataError(f"cannot merge {parts[0]} and {part}: their tokens are {dtype.name} and {other.name} "
                            f"(tokenizers of different vocabulary sizes)")
    tmp = prefix + ".tmp"
    try:
        with writing(prefix + ".bin", tmp + ".bin", tmp + ".idx", os.path.dirname(os.path.abspath(prefix))):
            os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
            with open(tmp + ".bin", "wb") as out:
                for part in parts:
                    with open(part + ".bin", "rb") as f:
                        shutil.copyfileobj(f, out, 16 << 20)
            with open(tmp + ".idx", "wb") as f:
                f.write(_INDEX_HEADER + struct.pack("<B", _DTYPE_CODES[dtype]) + struct.pack("<QQ", total, total + 1))
                for part, (_, n) in zip(parts, heads):
                    f.write(_read_lengths(part + ".idx", n).tobytes())
                start = np.int64(0)  # each sequence's byte offset in the merged .bin
                for part, (_, n) in zip(parts, heads):
                    bytes_ = _read_lengths(part + ".idx", n).astype(np.int64) * dtype.itemsize
                    f.write((start + np.cumsum(bytes_) - bytes_).tobytes())
                    start += bytes_.sum()
                for lo in range(0, total + 1, 1 << 24):
                    f.write(np.arange(lo, min(total + 1, lo + (1 << 24)), dtype=np.int64).tobytes())
            os.replace(tmp + ".bin", prefix + ".bin")
            os.replace(tmp + ".idx", prefix + ".idx")
    finally:
        for path in (tmp + ".bin", tmp + ".idx"):
            if os.path.exists(path):
                os.remove(path)


def _read_index_head(path: str, codes: dict) -> tuple[np.dtype, int]:
    """A write_shard index's token dtype and document count; any other index is refused by name."""
    with open(path, "rb") as f:
        head = f.read(len(_INDEX_HEADER) + 1 + 16)
    if len(head) < len(_INDEX_HEADER) + 17 or not head.startswith(_INDEX_HEADER) or head[len(_INDEX_HEADER)] not in codes:
        raise DataError(f"{path} is not a Megatron index of uint16 or int32 tokens")
    sequences, documents = struct.unpack("<QQ", head[len(_INDEX_HEADER) + 1:])
    if documents != sequences + 1:  # merge_shards writes one sequence a document, as write_shard does
        raise DataError(f"{path} has {sequences} sequences in {documents - 1} documents: not a write_shard part")
    return codes[head[len(_INDEX_HEADER)]], sequences


def _read_lengths(path: str, count: int) -> np.ndarray:
    return np.fromfile(path, np.int32, count=count, offset=len(_INDEX_HEADER) + 17)


def shard_prefix(path: str) -> str | None:
    """The Megatron prefix `path` names (PREFIX, PREFIX.bin or PREFIX.idx) when both files exist, else None."""
    prefix = path[:-4] if path.endswith((".bin", ".idx")) else path
    return prefix if os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx") else None


def check_source(path: str, flag: str) -> None:
    """A data argument must be a shard or a text file."""
    if shard_prefix(path) is not None:
        return
    if not os.path.isfile(path):
        raise ConfigError(f"{flag} {path}: no such file, and no .bin/.idx shard of that prefix")
    text_kind(path)


def text_kind(path: str) -> str:
    """How a text file is read, by its name in any case: "jsonl" (.jsonl, .jsonl.gz: a document per line) or "txt"
    (one document). Any other name is refused: a .json or .JSONL file was trained on as one document of JSON."""
    name = path.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    if name.endswith(".txt"):
        return "txt"
    raise ConfigError(f"{path}: a text input is .txt (the file is one document) or .jsonl[.gz] (a document per line); "
                      f"name the file by what it holds")


def shard_tokenizer(prefix: str) -> str | None:
    """The tokenizer a shard records it was made with: <prefix>.tokenizer.json (megagpt tokenize), else
    tokenizer.json in its folder, or in the corpus run above it (a run's tokens/<source>); None if none is."""
    folder = os.path.dirname(os.path.abspath(prefix))
    found = [prefix + ".tokenizer.json", os.path.join(folder, "tokenizer.json")]
    if os.path.basename(folder) == "tokens":
        found.append(os.path.join(os.path.dirname(folder), "tokenizer.json"))
    return next((p for p in found if os.path.isfile(p)), None)


@functools.lru_cache(maxsize=16)
def _fingerprint(path: str) -> str:  # the shards of a corpus run share one tokenizer.json
    return Tokenizer.load(path).fingerprint


def source_documents(paths: Iterable[str], flag: str, tokenizer: Tokenizer | None = None) -> Iterator[str | list[int]]:
    """The documents of each source `flag` names, in order: a shard's as token ids, a text file's as text.
    With `tokenizer`, a shard that records another tokenizer (shard_tokenizer) is refused: its ids mean other tokens."""
    for path in paths:
        check_source(path, flag)
        prefix = shard_prefix(path)
        if prefix is None:
            yield from read_documents([path])
            continue
        made_with = shard_tokenizer(prefix) if tokenizer is not None else None
        if made_with is not None and _fingerprint(made_with) != tokenizer.fingerprint:
            raise DataError(f"{flag} {path} was tokenized with {made_with}, not the model's tokenizer: its token ids "
                            f"stand for other text (tokenize the text with the model's tokenizer)")
        from megagpt.data.checks import shard_documents

        if not shard_documents(prefix):  # whole, and not empty (megatron-core cannot map an empty .bin)
            continue
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        data = IndexedDataset(prefix, mmap=True)
        for i in range(len(data)):
            yield np.asarray(data[i]).tolist()


def read_documents(paths: Iterable[str], text_key: str = "text") -> Iterator[str]:
    """Documents from .txt (one per file), .jsonl or .jsonl.gz (one per line, field text_key), by text_kind."""
    for path in paths:
        if text_kind(path) == "jsonl":
            yield from _read_jsonl(path, text_key)
            continue
        try:
            with open(path, encoding="utf-8", newline="") as f:  # the file's own line ends, as the document holds them
                yield f.read()
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _read_jsonl(path: str, text_key: str) -> Iterator[str]:
    for lineno, line in jsonl_lines(path):
        try:
            text = json.loads(line)[text_key]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{lineno}: not a JSON object with a {text_key!r} field ({exc})") from None
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: its {text_key!r} is {json.dumps(text)[:40]}, not a string")
        try:
            check_utf8(text)
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: its {text_key!r} {exc}") from None
        yield text
