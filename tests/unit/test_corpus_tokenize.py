"""The tokenize stage's shard writer: batches written at once, the same bytes as one add_document per document."""

import numpy as np
import torch

from megagpt.data.shards import token_dtype, write_shard
from megagpt.data.tokenizer import Tokenizer


def reference_shard(prefix: str, documents: list[str], tokenizer: Tokenizer) -> None:
    """megatron-core's builder as its API is meant to be used: one add_document per document."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=token_dtype(tokenizer.vocab_size))
    for text in documents:
        if text:
            ids = tokenizer.encode(text) + [tokenizer.eod]
            builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)])
    builder.finalize(prefix + ".idx")


def test_batched_shards_are_byte_identical_to_per_document_ones(tmp_path):
    rng = np.random.default_rng(0)
    words = "the of and a to in is it that for on with as was by at an be this from".split()
    documents = [" ".join(rng.choice(words, rng.integers(1, 300))) for _ in range(700)]
    documents[5] = ""  # empty documents are skipped by both
    documents[9] = "\u00e9t\u00e9 \U0001f600 caf\u00e9"  # multi-byte text
    tokenizer = Tokenizer.train(documents, 300)
    counts = write_shard(str(tmp_path / "ours"), documents, tokenizer, batch_size=64)
    reference_shard(str(tmp_path / "ref"), documents, tokenizer)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"ref{ext}").read_bytes()
    assert counts["documents"] == 699
    assert counts["tokens"] == sum(len(tokenizer.encode(d)) + 1 for d in documents if d)
