"""Training data checked before any process starts, each problem one line naming the file or key.

What would otherwise surface mid-run, or not at all: a shard whose .bin is shorter than its
.idx says (a truncated copy), a tokenizer with more ids than the model's embedding (at tp = 1
an IndexError after minutes of start-up, at tp > 1 silently masked tokens), and a
data.split share that leaves a split of some source empty (megatron-core loops forever).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from megagpt.config import Config
from megagpt.errors import ConfigError, DataError


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
    """The .idx must read, and the .bin must hold exactly the tokens it lists."""
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


def find_tokenizer(cfg: Config) -> str | None:
    """The tokenizer.json the data was made with: mixture.json's, else one beside a prefix."""
    d = cfg.data
    found = [p + ".tokenizer.json" for p in d.prefixes] + [os.path.join(os.path.dirname(p), "tokenizer.json")
                                                            for p in d.prefixes]
    if d.mixture and os.path.isfile(d.mixture):
        with open(d.mixture) as f:
            rel = json.load(f).get("tokenizer")
        if rel:
            found.insert(0, os.path.join(os.path.dirname(d.mixture), rel))
    return next((p for p in found if os.path.isfile(p)), None)


def check_vocabulary(cfg: Config) -> None:
    from megagpt.data.tokenizer import Tokenizer

    path = find_tokenizer(cfg)
    if path is None:
        return  # no tokenizer beside the shards (made elsewhere): nothing to compare against
    size = Tokenizer.load(path).vocab_size
    if size > cfg.model.vocab_size:
        raise ConfigError(f"the training data's tokenizer {path} has {size} tokens, more than "
                          f"model.vocab_size={cfg.model.vocab_size}: set model.vocab_size >= {size}")
