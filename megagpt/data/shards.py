"""Writing Megatron .bin/.idx shards (megatron-core's IndexedDatasetBuilder) from text."""

from __future__ import annotations

import gzip
import json
import os
from itertools import chain
from typing import Iterable, Iterator

import numpy as np

from megagpt.data.tokenizer import Tokenizer, batched
from megagpt.errors import ConfigError, DataError


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def write_shard(prefix: str, documents: Iterable[str], tokenizer: Tokenizer, batch_size: int = 256) -> dict:
    """Tokenize documents (each followed by EOD) into prefix.bin/.idx; returns counts.

    Written under temporary names and renamed, so a reader never sees half a shard.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    tmp = prefix + ".tmp"
    builder = IndexedDatasetBuilder(tmp + ".bin", dtype=token_dtype(tokenizer.vocab_size))
    docs = tokens = 0
    for batch in batched((d for d in documents if d), batch_size):
        encoded = tokenizer.encode_batch(batch)
        for ids in encoded:
            ids.append(tokenizer.eod)
        lengths = [len(ids) for ids in encoded]
        _add_documents(builder, np.fromiter(chain.from_iterable(encoded), builder.dtype, sum(lengths)), lengths)
        docs, tokens = docs + len(lengths), tokens + sum(lengths)
    builder.finalize(tmp + ".idx")
    os.replace(tmp + ".bin", prefix + ".bin")
    os.replace(tmp + ".idx", prefix + ".idx")
    return {"documents": docs, "tokens": tokens}


def _add_documents(builder, flat: np.ndarray, lengths: list[int]) -> None:
    """What builder.add_document does for each of these one-sequence documents, for a batch at once.

    By hand because add_document converts and writes per document: that made the tokenize stage run
    at under half of `tokenizers`' encode_batch speed. Same bytes (tests/unit/test_corpus_tokenize.py).
    """
    builder.data_file.write(flat.tobytes(order="C"))
    start = len(builder.sequence_lengths)
    builder.sequence_lengths.extend(lengths)
    builder.document_indices.extend(range(start + 1, start + len(lengths) + 1))


def shard_prefix(path: str) -> str | None:
    """The Megatron prefix `path` names (PREFIX, PREFIX.bin or PREFIX.idx) when both files exist, else None."""
    prefix = path[:-4] if path.endswith((".bin", ".idx")) else path
    return prefix if os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx") else None


def check_source(path: str, flag: str) -> None:
    """A data argument must be a shard or a text file."""
    if shard_prefix(path) is None and not os.path.isfile(path):
        raise ConfigError(f"{flag} {path}: no such file, and no .bin/.idx shard of that prefix")


def read_documents(paths: Iterable[str], text_key: str = "text") -> Iterator[str]:
    """Documents from .txt (one per file), .jsonl or .jsonl.gz (one per line, field text_key)."""
    for path in paths:
        try:
            if path.endswith((".jsonl", ".jsonl.gz")):
                yield from _read_jsonl(path, text_key)
            else:
                with open(path, encoding="utf-8") as f:
                    yield f.read()
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _read_jsonl(path: str, text_key: str) -> Iterator[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)[text_key]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{lineno}: not a JSON object with a {text_key!r} field ({exc})") from None
