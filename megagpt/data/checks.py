"""Training data checked before any process starts, each problem one line naming the file or key.

What would otherwise surface mid-run, or not at all: a shard whose .bin is shorter than its
.idx says (a truncated copy), shards made with different tokenizers (a blend that trains on
nonsense), a tokenizer with more ids than the model's embedding (at tp = 1 an IndexError after
minutes of start-up, at tp > 1 silently masked tokens), and a
data.split share that leaves a split of some source empty (megatron-core loops forever).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from megagpt.config import Config
from megagpt.errors import ConfigError, DataError
from megagpt.files import edges_fingerprint


def check_training_data(cfg: Config) -> None:
    from megagpt.data.datasets import check_split_sizes, resolve_blend

    prefixes, weights = resolve_blend(cfg)
    if weights is not None and not all(math.isfinite(w) and w > 0 for w in weights):
        where = f"data.mixture={cfg.data.mixture!r}" if cfg.data.mixture else "data.weights"
        raise ConfigError(f"{where}: weights {weights} must all be finite and positive")
    for prefix in prefixes:
        check_shard(prefix)
    check_vocabulary(cfg)
    check_split_sizes(cfg.data.split, prefixes)


def check_shard(prefix: str) -> None:
    """A shard to train on: whole (shard_documents), and not empty."""
    if not shard_documents(prefix):
        raise DataError(f"{prefix}.idx lists no documents: an empty shard has nothing to train on (leave it out)")


def shard_documents(prefix: str) -> int:
    """How many documents a shard holds, once its .idx reads and its .bin holds exactly the tokens it lists."""
    from megatron.core.datasets.indexed_dataset import _IndexReader

    try:
        index = _IndexReader(prefix + ".idx", multimodal=False)
    except Exception as exc:  # megatron-core asserts on a bad header; say which file
        raise DataError(f"{prefix}.idx is not a Megatron index ({type(exc).__name__}: {exc})") from None
    lengths, pointers = index.sequence_lengths, index.sequence_pointers
    expected = int(pointers[-1]) + int(lengths[-1]) * np.dtype(index.dtype).itemsize if len(lengths) else 0
    actual = os.path.getsize(prefix + ".bin")
    if actual != expected:
        raise DataError(f"{prefix}.bin has {actual} bytes but {prefix}.idx describes {expected} "
                        f"({len(lengths)} sequences): truncated or from another shard")
    return len(lengths)


def shard_identity(prefix: str) -> dict:
    """What a shard holds, cheaply: its documents and tokens, and a hash of its index's edges (which hold the first
    and last documents' lengths) to tell a rewrite of the same size."""
    from megatron.core.datasets.indexed_dataset import _IndexReader

    documents = shard_documents(prefix)  # a damaged index says so here; past it, the .bin holds exactly the tokens
    tokens = os.path.getsize(prefix + ".bin") // np.dtype(_IndexReader(prefix + ".idx", multimodal=False).dtype).itemsize
    return {"documents": documents, "tokens": tokens, "index_sha256": edges_fingerprint(prefix + ".idx")["edges_sha256"]}


def data_tokenizers(cfg: Config) -> dict[str, list[str]]:
    """The tokenizers the training data record they were made with -> what was made with each: mixture.json's for
    a mixture, else each prefix's own (megagpt.data.shards.shard_tokenizer); shards that record none are left out."""
    from megagpt.data.shards import shard_tokenizer

    d = cfg.data
    if d.mixture:  # `corpus mix` made sure its sources share one tokenizer, and named it
        try:
            with open(d.mixture) as f:
                rel = json.load(f).get("tokenizer")
        except (OSError, ValueError):
            return {}
        path = os.path.join(os.path.dirname(d.mixture), rel) if rel else None
        return {path: [d.mixture]} if path and os.path.isfile(path) else {}
    found: dict[str, list[str]] = {}
    for prefix in d.prefixes:
        path = shard_tokenizer(prefix)
        if path is not None:
            found.setdefault(path, []).append(prefix)
    return found


def find_tokenizer(cfg: Config) -> str | None:
    """The tokenizer.json the training data were made with (the first, where several record one)."""
    return next(iter(data_tokenizers(cfg)), None)


def check_vocabulary(cfg: Config) -> None:
    """The data's tokenizers are one (by their ids, not their files) and fit model.vocab_size."""
    from megagpt.data.tokenizer import Tokenizer

    found = data_tokenizers(cfg)
    if not found:
        return  # no tokenizer beside the shards (made elsewhere): nothing to compare against
    loaded = {path: Tokenizer.load(path) for path in found}
    kinds = {tok.fingerprint: path for path, tok in loaded.items()}
    if len(kinds) > 1:
        a, b = list(kinds.values())[:2]
        raise DataError(f"the training data were made with different tokenizers: {found[a][0]} with {a}, "
                        f"{found[b][0]} with {b}; the same id stands for other text in each (tokenize all with one)")
    path, size = next(iter(found)), next(iter(loaded.values())).vocab_size
    if size > cfg.model.vocab_size:
        raise ConfigError(f"the training data's tokenizer {path} has {size} tokens, more than "
                          f"model.vocab_size={cfg.model.vocab_size}: set model.vocab_size >= {size}")
