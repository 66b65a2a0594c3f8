import gzip
import json

import numpy as np
import pytest

from megagpt.data.shards import read_documents, write_shard
from megagpt.data.tokenizer import EOD, Tokenizer
from megagpt.errors import ConfigError, DataError

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3, "Pack my box with five dozen liquor jugs!",
         "Unicode survives: naïve café, 東京, emoji 🙂."] * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS, vocab_size=400)


def test_trained_bpe_round_trips_bytes(tok):
    assert tok.vocab_size <= 400 and tok.eod == tok._tok.token_to_id(EOD)
    for text in TEXTS[:3] + ["never seen: ZQX 12345 \t\n"]:
        assert tok.decode(tok.encode(text)) == text


def test_end_of_document_written_in_a_text_is_text(tok, tmp_path):
    """`tokenizers` read "<|endoftext|>" in a document as the EOD id: the document split in two, and decode dropped
    it. Whichever way a tokenizer is read, the only EOD in a shard is the one after each document."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    text = f"before {EOD} after\n{EOD}"
    tok.save(str(tmp_path / "tokenizer.json"))
    for t in (tok, Tokenizer.load(str(tmp_path / "tokenizer.json")), Tokenizer.load(str(gpt2_directory(tmp_path / "gpt2")))):
        assert t.eod not in t.encode(text) and t.decode(t.encode(text)) == text
        assert t.encode_batch([text, "plain"]) == [t.encode(text), t.encode("plain")]
    write_shard(str(tmp_path / "shard"), [text, "next"], tok)
    shard = IndexedDataset(str(tmp_path / "shard"))  # held: its arrays are views of its memory map
    ids = shard[0].tolist()
    assert ids.count(tok.eod) == 1 and ids[-1] == tok.eod and tok.decode(ids) == text


def test_the_fingerprint_tells_tokenizers_by_their_ids_not_their_files(tok, tmp_path):
    tok.save_gpt2_files(str(tmp_path / "gpt2"))
    tok.save(str(tmp_path / "tokenizer.json"))
    assert Tokenizer.load(str(tmp_path / "gpt2")).fingerprint == tok.fingerprint
    assert Tokenizer.load(str(tmp_path / "tokenizer.json")).fingerprint == tok.fingerprint
    assert Tokenizer.train(TEXTS, vocab_size=300).fingerprint != tok.fingerprint  # other merges
    raw = json.loads(tok._tok.to_str())
    raw["pre_tokenizer"]["add_prefix_space"] = True  # same vocabulary, other ids for "hello world"
    (tmp_path / "spaced.json").write_text(json.dumps(raw))
    spaced = Tokenizer.load(str(tmp_path / "spaced.json"))
    assert spaced.encode("hello world") != tok.encode("hello world") and spaced.fingerprint != tok.fingerprint


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
    (tmp_path / "UP.JSONL").write_text('{"text": "upper"}\n')  # was one document of raw JSON
    (tmp_path / "a.Jsonl.GZ").write_bytes(gzip.compress(b'{"text": "mixed"}\n'))
    (tmp_path / "B.TXT").write_text("shouted")
    assert list(read_documents([str(tmp_path / n) for n in ("UP.JSONL", "a.Jsonl.GZ", "B.TXT")])) == [
        "upper", "mixed", "shouted"]
    for name in ("docs.json", "notes.md"):  # JSON, or some other text: refused, not trained on as one document
        (tmp_path / name).write_text('{"text": "first"}\n')
        with pytest.raises(ConfigError, match=rf"{name}: a text input is .txt \(the file is one document\) or "
                                              r"\.jsonl\[\.gz\] \(a document per line\)"):
            list(read_documents([str(tmp_path / name)]))
    (tmp_path / "crlf.txt").write_bytes(b"line one\r\nold mac\rend\n")  # was read with every line end as \n
    assert list(read_documents([str(tmp_path / "crlf.txt")])) == ["line one\r\nold mac\rend\n"]
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"c.jsonl:2: not a JSON object with a 'text' field"):
        list(read_documents([str(tmp_path / "c.jsonl")]))
    (tmp_path / "e.jsonl").write_text('{"text": "ok"}\n{"text": 5}\n{"text": null}\n')
    with pytest.raises(DataError, match=r"e.jsonl:2: its 'text' is 5, not a string"):  # was a TypeError traceback
        list(read_documents([str(tmp_path / "e.jsonl")]))
    (tmp_path / "s.jsonl").write_text('{"text": "ok"}\n{"text": "half \\ud800 a pair"}\n')  # valid JSON, not text
    with pytest.raises(DataError, match=r"s.jsonl:2: its 'text' holds '\\ud800', a lone UTF-16 surrogate"):
        list(read_documents([str(tmp_path / "s.jsonl")]))  # was tokenizers' TypeError, with no file or line
    (tmp_path / "d.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match=r"d.txt: not UTF-8 text \(byte 3"):
        list(read_documents([str(tmp_path / "d.txt")]))
    # gzip damage was a traceback in every rank; a gzip or plain file is told by its bytes, not its name
    packed = (tmp_path / "b.jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[:-10])
    (tmp_path / "fake.jsonl.gz").write_bytes(b"not gzip at all")
    (tmp_path / "plain.jsonl.gz").write_text(json.dumps({"text": "plain"}) + "\n")
    (tmp_path / "packed.jsonl").write_bytes(packed)
    with pytest.raises(DataError, match=r"cut.jsonl.gz: truncated gzip"):
        list(read_documents([str(tmp_path / "cut.jsonl.gz")]))
    bad = bytearray(packed)
    bad[-9] ^= 0xFF  # the CRC
    (tmp_path / "flip.jsonl.gz").write_bytes(bytes(bad))
    with pytest.raises(DataError, match=r"flip.jsonl.gz: corrupt gzip"):
        list(read_documents([str(tmp_path / "flip.jsonl.gz")]))
    with pytest.raises(DataError, match=r"fake.jsonl.gz:1: not a JSON object"):  # plain bytes: read as plain
        list(read_documents([str(tmp_path / "fake.jsonl.gz")]))
    assert list(read_documents([str(tmp_path / "plain.jsonl.gz"), str(tmp_path / "packed.jsonl")])) == [
        "plain", "one", "two"]


@pytest.mark.parametrize("packed", [False, True])
def test_bytes_that_are_not_utf8_are_placed_in_the_file_not_in_a_decode_chunk(tmp_path, packed):
    """A text-mode reader's UnicodeDecodeError counts from the chunk it was decoding: 'byte 61' for byte 163901."""
    good = b"".join(json.dumps({"text": f"doc {i}"}).encode() + b"\n" for i in range(5000))
    data = good + b'{"text": "x\xff"}\n'
    (tmp_path / "late.jsonl").write_bytes(gzip.compress(data) if packed else data)
    where = " of the decompressed text" if packed else ""
    with pytest.raises(DataError, match=rf"late.jsonl:5001: not UTF-8 text \(byte {len(good) + 11}{where}: invalid start"):
        list(read_documents([str(tmp_path / "late.jsonl")]))


def test_tokenize_reads_a_file_once_under_any_of_its_names(tok, tmp_path, capsys):
    """A hard link to an input was read again (tokenize compared resolved paths; training's check compares inodes)."""
    import os

    from megatron.core.datasets.indexed_dataset import IndexedDataset

    import launchers.cli as cli

    (tmp_path / "a.txt").write_text("some text")
    os.link(tmp_path / "a.txt", tmp_path / "hard.txt")
    os.symlink("a.txt", tmp_path / "soft.txt")
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(SystemExit) as done:
        cli.main(["tokenize", "--input", *(str(tmp_path / n) for n in ("a.txt", "hard.txt", "soft.txt")),
                  "--output-prefix", str(tmp_path / "out"), "--tokenizer", str(tmp_path / "tokenizer.json")])
    assert done.value.code == 0
    assert "2 --input path(s) name a file given already" in capsys.readouterr().err
    shard = IndexedDataset(str(tmp_path / "out"))
    assert len(shard) == 1


def test_missing_tokenizer_files_are_named(tmp_path):
    with pytest.raises(DataError, match="vocab.json not found"):
        Tokenizer.from_gpt2_files(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))


def megatron_builder_shard(prefix, texts, tok):
    """What write_shard wrote before it wrote the files itself: megatron-core's builder, a document at a time."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megagpt.data.shards import token_dtype

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=token_dtype(tok.vocab_size))
    for text in (t for t in texts if t):
        ids = tok.encode(text) + [tok.eod]
        builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)])
    builder.finalize(prefix + ".idx")


class WideTokenizer(Tokenizer):
    """The same ids, reported as a vocabulary too large for uint16, so shards take int32."""

    vocab_size = 70_000


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("texts", [TEXTS[:7] + ["", "last"], []], ids=["documents", "none"])
def test_shard_bytes_equal_megatron_builders(tok, tmp_path, texts, wide):
    tok = WideTokenizer(tok._tok) if wide else tok
    write_shard(str(tmp_path / "ours"), iter(texts), tok, batch_size=3)  # batches end mid-list and on an empty text
    megatron_builder_shard(str(tmp_path / "theirs"), texts, tok)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"theirs{ext}").read_bytes()


def gpt2_directory(path):
    """GPT-2-format vocab.json + merges.txt, as `tokenizers` writes them (save_model)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(TEXTS, vocab_size=350, special_tokens=[EOD], show_progress=False)
    path.mkdir()
    bpe.save_model(str(path))
    return path


def test_gpt2_directory_loads_with_the_ids_tokenizers_gives(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    d = gpt2_directory(tmp_path / "gpt2")
    tok = Tokenizer.load(str(d))
    reference = ByteLevelBPETokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    texts = TEXTS[:3] + ["never seen: ZQX 12345 \t\n"]
    assert tok.encode_batch(texts) == [e.ids for e in reference.encode_batch(texts)]
    assert tok.eod == reference.token_to_id(EOD)


def test_bad_tokenizer_paths_are_one_line_errors(tmp_path):
    d = gpt2_directory(tmp_path / "gpt2")
    with pytest.raises(DataError, match="tokenizer file .*nowhere.json not found"):
        Tokenizer.load(str(tmp_path / "nowhere.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad.json is not a tokenizer.json \("):
        Tokenizer.load(str(tmp_path / "bad.json"))
    merges = (d / "merges.txt").read_text()
    (d / "merges.txt").unlink()
    with pytest.raises(DataError, match=r"tokenizer directory .*gpt2 has no merges.txt and no tokenizer.json \(a GPT"):
        Tokenizer.load(str(d))
    (d / "merges.txt").write_text(merges + "zz qq\n")  # a merge of tokens the vocabulary lacks
    with pytest.raises(DataError, match=r"merges.txt does not fit .*vocab.json as GPT-2 merges"):
        Tokenizer.load(str(d))
    (d / "merges.txt").write_text(merges)
    (d / "vocab.json").write_text('["a", "b"]')
    with pytest.raises(DataError, match=r"vocab.json is not a GPT-2 vocab.json \(want a JSON object"):
        Tokenizer.load(str(d))
    (d / "vocab.json").write_text("{truncated")
    with pytest.raises(DataError, match=r"vocab.json is not a GPT-2 vocab.json \("):
        Tokenizer.load(str(d))


def test_a_directory_export_hf_wrote_is_a_tokenizer(tmp_path):
    """export-hf writes tokenizer.json (no vocab.json/merges.txt): its directory names that tokenizer."""
    tok = Tokenizer.load(str(gpt2_directory(tmp_path / "gpt2")))
    (tmp_path / "hf").mkdir()
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    loaded = Tokenizer.load(str(tmp_path / "hf"))
    assert loaded.encode("hello world") == tok.encode("hello world") and loaded.fingerprint == tok.fingerprint


def test_a_full_disk_while_the_run_keeps_its_tokenizer_is_one_line(tmp_path, monkeypatch):
    """shutil.copyfile's sendfile error names the source and the target: it was taken for a failed read of the
    tokenizer and raised as a traceback."""
    import errno
    import shutil

    from megagpt.config import ConfigError
    from megagpt.data.tokenizer import keep_tokenizer

    source = tmp_path / "tokenizer.json"
    source.write_text("{}")

    def full(src, dst):
        raise OSError(errno.EFBIG, "File too large", src, None, dst)

    monkeypatch.setattr(shutil, "copyfile", full)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as caught:
        keep_tokenizer(str(source), str(run_dir))
    assert str(caught.value) == f"run.dir={str(run_dir)!r} cannot be written (File too large)"
    assert list(run_dir.iterdir()) == []


@pytest.mark.parametrize("wide", [False, True])
def test_merged_parts_are_the_files_megatron_add_index_gives(tmp_path, wide):
    """merge_shards streams the parts where megatron-core's builder held every length in Python lists; the bytes
    are the same, for parts of one, several and many documents, in uint16 and int32."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    from megagpt.data.shards import merge_shards, token_dtype, write_shard

    tok = (WideTokenizer if wide else Tokenizer).train(TEXTS, vocab_size=300)
    parts = []
    for k, texts in enumerate([TEXTS[:1], TEXTS[1:6], TEXTS * 3]):
        parts.append(str(tmp_path / f"part{k}"))
        write_shard(parts[-1], texts, tok)
    builder = IndexedDatasetBuilder(str(tmp_path / "megatron.bin"), dtype=token_dtype(tok.vocab_size))
    for part in parts:
        builder.add_index(part)
    builder.finalize(str(tmp_path / "megatron.idx"))
    merge_shards(parts, str(tmp_path / "ours"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"megatron{ext}").read_bytes()
    assert len(IndexedDataset(str(tmp_path / "ours"))) == 1 + 5 + 3 * len(TEXTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{p}{e}" for p in ("part0", "part1", "part2", "megatron", "ours")
                                                  for e in (".bin", ".idx"))


def test_parts_of_different_vocabularies_are_not_merged(tmp_path):
    from megagpt.data.shards import merge_shards, write_shard

    write_shard(str(tmp_path / "narrow"), TEXTS[:2], Tokenizer.train(TEXTS, vocab_size=300))
    write_shard(str(tmp_path / "wide"), TEXTS[:2], WideTokenizer.train(TEXTS, vocab_size=300))
    with pytest.raises(DataError, match=r"narrow and .*wide: their tokens are uint16 and int32"):
        merge_shards([str(tmp_path / "narrow"), str(tmp_path / "wide")], str(tmp_path / "merged"))
    assert not list(tmp_path.glob("merged*"))
