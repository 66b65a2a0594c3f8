"""Writing Megatron .bin/.idx shards (megatron-core's IndexedDatasetBuilder) from text."""

from __future__ import annotations

import gzip
import json
import os
from typing import Iterable, Iterator

import numpy as np
import torch

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
        for ids in tokenizer.encode_batch(batch):
            ids.append(tokenizer.eod)
            builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)])
            docs += 1
            tokens += len(ids)
    builder.finalize(tmp + ".idx")
    os.replace(tmp + ".bin", prefix + ".bin")
    os.replace(tmp + ".idx", prefix + ".idx")
    return {"documents": docs, "tokens": tokens}


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
