import gzip
import json

import numpy as np
import pytest

from megagpt.data.shards import read_documents, write_shard
from megagpt.data.tokenizer import EOD, Tokenizer
from megagpt.errors import DataError

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3, "Pack my box with five dozen liquor jugs!",
         "Unicode survives: naïve café, 東京, emoji 🙂."] * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS, vocab_size=400)


def test_trained_bpe_round_trips_bytes(tok):
    assert tok.vocab_size <= 400 and tok.eod == tok._tok.token_to_id(EOD)
    for text in TEXTS[:3] + ["never seen: ZQX 12345 \t\n"]:
        assert tok.decode(tok.encode(text)) == text


def test_gpt2_files_give_the_same_ids(tok, tmp_path):
    tok.save_gpt2_files(str(tmp_path))
    again = Tokenizer.from_gpt2_files(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert again.encode(TEXTS[2]) == tok.encode(TEXTS[2]) and again.eod == tok.eod
    tok.save(str(tmp_path / "tokenizer.json"))
    assert Tokenizer.load(str(tmp_path / "tokenizer.json")).encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_shard_round_trips_token_ids(tok, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    counts = write_shard(str(tmp_path / "shard"), TEXTS[:3], tok)
    ds = IndexedDataset(str(tmp_path / "shard"))
    assert counts == {"documents": 3, "tokens": sum(len(tok.encode(t)) + 1 for t in TEXTS[:3])}
    assert len(ds) == 3 and ds[0].dtype == np.uint16
    for i, text in enumerate(TEXTS[:3]):
        assert ds[i].tolist() == tok.encode(text) + [tok.eod]


def test_read_documents_formats_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("whole file")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert list(read_documents([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl.gz")])) == ["whole file", "one", "two"]
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"c.jsonl:2: not a JSON object with a 'text' field"):
        list(read_documents([str(tmp_path / "c.jsonl")]))
    (tmp_path / "d.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match=r"d.txt: not UTF-8 text \(byte 3"):
        list(read_documents([str(tmp_path / "d.txt")]))


def test_missing_tokenizer_files_are_named(tmp_path):
    with pytest.raises(DataError, match="vocab.json not found"):
        Tokenizer.from_gpt2_files(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
