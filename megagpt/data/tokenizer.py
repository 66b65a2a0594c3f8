"""Byte-level BPE (GPT-2's scheme) on Hugging Face `tokenizers`: trained, or loaded from GPT-2 files."""

from __future__ import annotations

import json
import os
from typing import Iterable, Iterator

from megagpt.errors import DataError

EOD = "<|endoftext|>"


class Tokenizer:
    """Text <-> ids, with the end-of-document id that separates documents in shards."""

    def __init__(self, hf_tokenizer, source: str = "tokenizer"):
        self._tok = hf_tokenizer
        eod = hf_tokenizer.token_to_id(EOD)
        if eod is None:
            raise DataError(f"{source} has no {EOD} token")
        self.eod = eod

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> "Tokenizer":
        from tokenizers import ByteLevelBPETokenizer

        tok = ByteLevelBPETokenizer(add_prefix_space=False)
        tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=[EOD], show_progress=False)
        return cls(tok._tokenizer)

    @classmethod
    def from_gpt2_files(cls, vocab_json: str, merges_txt: str) -> "Tokenizer":
        from tokenizers import ByteLevelBPETokenizer

        for path in (vocab_json, merges_txt):
            if not os.path.isfile(path):
                raise DataError(f"tokenizer file {path} not found")
        tok = ByteLevelBPETokenizer(vocab_json, merges_txt, add_prefix_space=False)
        if tok.token_to_id(EOD) is None:
            tok.add_special_tokens([EOD])
        return cls(tok._tokenizer)

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        if not os.path.isfile(path):
            raise DataError(f"tokenizer file {path} not found")
        return cls(HFTokenizer.from_file(path), source=f"tokenizer file {path}")

    def save(self, path: str) -> None:
        self._tok.save(path)

    def save_gpt2_files(self, directory: str) -> None:
        """vocab.json + merges.txt, the files GPT-2 tooling (and transformers) read."""
        model = json.loads(self._tok.to_str())["model"]
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "vocab.json"), "w") as f:
            json.dump(model["vocab"], f, ensure_ascii=False)
        with open(os.path.join(directory, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n")
            for merge in model["merges"]:
                f.write((merge if isinstance(merge, str) else " ".join(merge)) + "\n")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids))


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
