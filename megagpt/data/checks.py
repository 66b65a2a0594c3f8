"""Training data checked before any process starts, each problem one line naming the file or key.

What would otherwise surface mid-run, or not at all: a shard whose .bin is shorter than its
.idx says (a truncated copy), shards made with different tokenizers (a blend that trains on
nonsense), a tokenizer with more ids than the model's embedding (at tp = 1 an IndexError after
minutes of start-up, at tp > 1 silently masked tokens), and a
data.split share that leaves a split of some source empty (megatron-core loops forever).
"""

from __future__ import annotations

import functools
import json
import math
import os

import numpy as np

from megagpt.config import Config
from megagpt.errors import ConfigError, DataError
from megagpt.files import edges_fingerprint, sha256_file


def check_training_data(cfg: Config) -> None:
    from megagpt.data.datasets import check_split_sizes, resolve_blend

    prefixes, weights = resolve_blend(cfg)
    # their sum too: megatron-core normalises by it, and 1e308 twice failed its assertion in every rank
    if weights is not None and not (all(math.isfinite(w) and w > 0 for w in weights) and math.isfinite(sum(weights))):
        where = f"data.mixture={cfg.data.mixture!r}" if cfg.data.mixture else "data.weights"
        raise ConfigError(f"{where}: weights {weights} must all be finite and positive, and so must their sum")
    for prefix in prefixes:
        check_shard(prefix)
    check_vocabulary(cfg)  # first: where the shards record their tokenizer, its size says what to set
    for prefix in prefixes:
        check_token_ids(prefix, cfg.model.vocab_size)
    check_split_sizes(cfg.data.split, prefixes)


def check_shard(prefix: str) -> None:
    """A shard to train on: whole (shard_documents), not empty, and a sequence per document."""
    from megatron.core.datasets.indexed_dataset import _IndexReader

    sequences = shard_documents(prefix)
    if not sequences:
        raise DataError(f"{prefix}.idx lists no documents: an empty shard has nothing to train on (leave it out)")
    documents = len(_IndexReader(prefix + ".idx", multimodal=False).document_indices) - 1
    if documents != sequences:  # the split checks count documents, megatron-core's split sequences: a run hung
        raise DataError(f"{prefix} holds {sequences} sequences in {documents} documents (split into sentences, as "
                        f"Megatron-LM's preprocess_data.py --split-sentences writes): megagpt trains on a sequence "
                        f"per document, as `megagpt tokenize` writes them")


def check_token_ids(prefix: str, vocab_size: int, windows: int = 16, window_tokens: int = 1 << 15) -> None:
    """No token id past the model's vocabulary in `windows` spread over the .bin (the first and last among them):
    a shard from another tokenizer holds such ids throughout, and this catches one that records no tokenizer.
    (Sampled: reading every token of a large corpus at each start would take minutes; micro_batches checks each
    batch it reads as well.)"""
    from megatron.core.datasets.indexed_dataset import _IndexReader

    dtype = np.dtype(_IndexReader(prefix + ".idx", multimodal=False).dtype)
    tokens = np.memmap(prefix + ".bin", dtype=dtype, mode="r")
    starts = np.linspace(0, max(len(tokens) - window_tokens, 0), windows).astype(np.int64)
    top = max(int(tokens[s:s + window_tokens].max()) for s in np.unique(starts)) if len(tokens) else 0
    del tokens
    if top >= vocab_size:
        raise DataError(f"{prefix}.bin holds token id {top}, beyond model.vocab_size={vocab_size}: made with another "
                        f"tokenizer, or model.vocab_size is too small")


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
    """_shard_identity, read once a process per state of the files (a start asks for it for the index cache, the
    blend's weights and the inputs it records)."""
    try:
        stamp = tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in map(os.stat, (prefix + ".idx", prefix + ".bin")))
    except OSError:
        return _shard_identity.__wrapped__(prefix, ())  # what is missing, said as shard_documents says it
    return dict(_shard_identity(prefix, stamp))


@functools.lru_cache(maxsize=4096)
def _shard_identity(prefix: str, stamp: tuple) -> dict:
    """What a shard holds, cheaply: its documents and tokens; its whole index (every document's length, which the
    sample index is made of: a hash of its first and last MiB missed documents swapped in between, and a cache
    built for the old order was read); and the first and last MiB of its tokens (text rewritten into as many tokens
    left the index as it was). `index_sha256`, the index's edges, is what checkpoints recorded before."""
    from megatron.core.datasets.indexed_dataset import _IndexReader

    documents = shard_documents(prefix)  # a damaged index says so here; past it, the .bin holds exactly the tokens
    tokens = os.path.getsize(prefix + ".bin") // np.dtype(_IndexReader(prefix + ".idx", multimodal=False).dtype).itemsize
    return {"documents": documents, "tokens": tokens, "index_sha256": edges_fingerprint(prefix + ".idx")["edges_sha256"],
            "whole_index_sha256": sha256_file(prefix + ".idx"),
            "tokens_edges_sha256": edges_fingerprint(prefix + ".bin")["edges_sha256"]}


def data_tokenizers(cfg: Config) -> dict[str, list[str]]:
    """The tokenizers the training data record they were made with -> what was made with each: mixture.json's, and
    each shard's own (megagpt.data.shards.shard_tokenizer); shards that record none are left out."""
    from megagpt.data.shards import shard_tokenizer

    from megagpt.data.datasets import resolve_blend

    d = cfg.data
    found: dict[str, list[str]] = {}
    if d.mixture:  # the one `corpus mix` named; a mixture.json written by hand may join shards that record others
        try:
            with open(d.mixture) as f:
                rel = json.load(f).get("tokenizer")
        except (OSError, ValueError, AttributeError):
            rel = None
        path = os.path.join(os.path.dirname(d.mixture), rel) if isinstance(rel, str) else None
        if path and os.path.isfile(path):
            found[path] = [d.mixture]
    for prefix in resolve_blend(cfg)[0]:
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
