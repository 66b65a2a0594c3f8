"""Byte-level BPE (GPT-2's scheme) on Hugging Face `tokenizers`: trained, or loaded from a path.

`Tokenizer.load` is the one place a tokenizer is read from a path, for the corpus pipeline
and the trainer alike: a tokenizer.json, or a directory holding GPT-2's vocab.json + merges.txt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from typing import Iterable

from megagpt.errors import ConfigError, DataError

EOD = "<|endoftext|>"
SMALLEST_VOCAB = 257  # 256 byte tokens plus EOD: a byte-level BPE cannot be smaller
GPT2_FILES = ("vocab.json", "merges.txt")


def tokenizer_files(path: str) -> list[str]:
    """The files a tokenizer path is read from: a tokenizer.json; or in a directory GPT-2's vocab.json + merges.txt
    (an HF model snapshot), else its tokenizer.json (what export-hf writes)."""
    if not os.path.isdir(path):
        return [path]
    gpt2 = [os.path.join(path, name) for name in GPT2_FILES]
    if all(map(os.path.isfile, gpt2)):
        return gpt2
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        return [os.path.join(path, "tokenizer.json")]
    missing = next(name for name in GPT2_FILES if not os.path.isfile(os.path.join(path, name)))
    raise DataError(f"tokenizer directory {path} has no {missing} and no tokenizer.json "
                    f"(a GPT-2 tokenizer is vocab.json + merges.txt)")


def check_tokenizer_flag(path: str, flag: str = "--tokenizer") -> None:
    """A tokenizer named on the command line reads as Tokenizer.load reads it (a tokenizer.json, or a directory of
    GPT-2's vocab.json + merges.txt or a tokenizer.json): checked before any process starts."""
    if not os.path.exists(path):
        raise ConfigError(f"{flag} {path}: no such file or directory")
    try:
        Tokenizer.load(path)
    except DataError as exc:
        raise ConfigError(f"{flag} {path}: {exc}") from None


class Tokenizer:
    """Text <-> ids, with the end-of-document id that separates documents in shards."""

    def __init__(self, hf_tokenizer, source: str = "tokenizer"):
        # Text is encoded as text: by default `tokenizers` reads "<|endoftext|>" written in a document as the
        # end-of-document id, which split the document in two (and decode dropped it). The only EOD is the one
        # appended. A setting of this object, not of the saved file: Hugging Face users keep their defaults.
        hf_tokenizer.encode_special_tokens = True
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
        """GPT-2's byte-level BPE from its two files, as `tokenizers` reads them (no prefix space)."""
        from tokenizers import ByteLevelBPETokenizer

        for path in (vocab_json, merges_txt):
            if not os.path.isfile(path):
                raise DataError(f"tokenizer file {path} not found")
        # tokenizers' own errors name neither file; read the vocabulary first, so what it
        # still refuses afterwards is the merges file's fault
        try:
            with open(vocab_json, encoding="utf-8") as f:
                vocab = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{vocab_json} is not a GPT-2 vocab.json ({exc})") from None
        if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
            raise DataError(f"{vocab_json} is not a GPT-2 vocab.json (want a JSON object of token -> id)")
        try:
            tok = ByteLevelBPETokenizer(vocab_json, merges_txt, add_prefix_space=False)
        except Exception as exc:  # tokenizers raises a bare Exception
            raise DataError(f"{merges_txt} does not fit {vocab_json} as GPT-2 merges ({exc})") from None
        if tok.token_to_id(EOD) is None:
            tok.add_special_tokens([EOD])
        return cls(tok._tokenizer)

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        """A tokenizer.json, or a directory holding GPT-2's vocab.json + merges.txt."""
        from tokenizers import Tokenizer as HFTokenizer

        files = tokenizer_files(path)
        if len(files) == 2:
            return cls.from_gpt2_files(*files)
        path = files[0]
        if not os.path.isfile(path):
            raise DataError(f"tokenizer file {path} not found")
        try:
            tok = HFTokenizer.from_file(path)
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise DataError(f"{path} is not a tokenizer.json ({exc})") from None
        return cls(tok, source=f"tokenizer file {path}")

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of what decides the ids (normalizer, pre-tokenizer, post-processor, the model with its
        vocabulary and merges), not of a file's formatting or of decoding, truncation and padding: two
        tokenizers with one fingerprint give a text the same ids, whichever files they were read from.
        A tokenizer.json and the GPT-2 files written from it (save_gpt2_files) agree: added tokens count as
        the vocabulary entries they are, and an unset affix option as an empty one."""
        raw = json.loads(self._tok.to_str())
        model = {k: "" if v is None else v for k, v in raw["model"].items()}
        model["vocab"] = {**raw["model"].get("vocab", {}), **{t["content"]: t["id"] for t in raw.get("added_tokens") or []}}
        key = {"model": model, **{k: raw.get(k) for k in ("normalizer", "pre_tokenizer", "post_processor")}}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def save(self, path: str) -> None:
        self._tok.save(path)

    def to_str(self) -> str:
        """tokenizer.json's text (without this object's encode-as-text setting)."""
        return self._tok.to_str()

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
        # the ids of encode_batch without its character offsets, which nothing here reads
        return [e.ids for e in self._tok.encode_batch_fast(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids))


def keep_tokenizer(path: str, run_dir: str) -> None:
    """Copy a run's tokenizer into its run dir, where the next stage, generate and eval look for it first (the
    training data may move, and a relative data path means another file from another directory).
    Under srun every rank runs the preflight that calls this: rank 0 writes (atomically), the others leave it."""
    from megagpt.parallel.distributed import launched_as_rank_zero

    target = os.path.join(run_dir, "tokenizer.json")
    if not launched_as_rank_zero() or os.path.abspath(path) == os.path.abspath(target):
        return
    tmp = f"{target}.tmp.{os.getpid()}"
    try:
        os.makedirs(run_dir, exist_ok=True)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        # reading the tokenizer: its own error; copyfile's failed sendfile names both files, and is the write's
        if exc.filename == path and exc.filename2 is None:
            raise
        raise ConfigError(f"run.dir={run_dir!r} cannot be written ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
