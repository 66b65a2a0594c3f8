"""The tokenizer stage: a bounded, seeded training sample; a given tokenizer (file or GPT-2 directory) skips training."""

import json

import pytest

from data_pipeline.synthetic import english_pages
from data_pipeline.tokens import sample_key, training_sample, write_tokenizer
from megagpt.data.tokenizer import EOD, Tokenizer
from megagpt.errors import ConfigError

PAGES = english_pages()[:12]
DOCS = [(f"crawl/a.jsonl:{i}", text) for i, text in enumerate(PAGES)]


def size(texts):
    return sum(len(t.encode()) for t in texts)


def test_sample_is_seeded_bounded_and_a_prefix_of_the_key_order():
    budget = size(PAGES) // 2
    sample = training_sample(iter(DOCS), budget, seed=3)
    assert sample == training_sample(iter(DOCS), budget, seed=3) and 0 < size(sample) <= budget
    assert training_sample(reversed(DOCS), budget, seed=3) == sample[::-1]  # chosen by id, not by position
    by_key = [text for doc_id, text in sorted(DOCS, key=lambda d: sample_key(3, d[0]))]
    assert set(sample) == set(by_key[:len(sample)]) and size(by_key[:len(sample) + 1]) > budget
    assert [t for t in PAGES if t in sample] == sample  # in input order
    assert training_sample(iter(DOCS), budget, seed=4) != sample


def test_a_corpus_within_the_budget_trains_the_tokenizer_the_whole_corpus_gives(tmp_path):
    assert training_sample(iter(DOCS), size(PAGES), seed=0) == PAGES
    write_tokenizer(None, str(tmp_path / "tokenizer.json"), iter(DOCS), 400, budget=10**9, seed=0)
    Tokenizer.train(PAGES, 400).save(str(tmp_path / "whole.json"))
    assert (tmp_path / "tokenizer.json").read_bytes() == (tmp_path / "whole.json").read_bytes()


def gpt2_directory(path):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(PAGES, vocab_size=400, special_tokens=[EOD], show_progress=False)
    path.mkdir()
    bpe.save_model(str(path))  # GPT-2's format: vocab.json + merges.txt
    return path


def run_corpus(tmp_path, monkeypatch, *overrides):
    from data_pipeline.config import load_corpus_config
    from data_pipeline.pipeline import run

    def no_training(*args, **kwargs):
        raise AssertionError("trained a tokenizer although one was given")

    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in PAGES))
    monkeypatch.setattr(Tokenizer, "train", no_training)
    cfg = load_corpus_config(None, [f"input.paths=[{tmp_path}/a.jsonl]", f"output.dir={tmp_path}/out",
                                    "executor.workers=1", "filters.min_words=10", *overrides])
    run(cfg, progress=False)
    return tmp_path / "out"


def kept_texts(out):
    from data_pipeline.io import read_jsonl_gz

    return [d["text"] for d in read_jsonl_gz(str(out / "documents" / "commoncrawl" / "00000.jsonl.gz"))]


def shard_ids(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix))
    return [ds[i].tolist() for i in range(len(ds))]


def test_gpt2_files_skip_training_and_give_tokenizers_ids(tmp_path, monkeypatch):
    from tokenizers import ByteLevelBPETokenizer

    d = gpt2_directory(tmp_path / "gpt2")
    out = run_corpus(tmp_path, monkeypatch, f"tokenize.tokenizer={d}")
    reference = ByteLevelBPETokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    eod = reference.token_to_id(EOD)
    texts = kept_texts(out)
    assert len(texts) >= 8
    assert shard_ids(out / "tokens" / "commoncrawl") == [e.ids + [eod] for e in reference.encode_batch(texts)]
    mixture = json.loads((out / "mixture.json").read_text())
    assert mixture["tokenizer"] == "tokenizer.json"  # the directory, written once as the file training reads
    assert Tokenizer.load(str(out / "tokenizer.json")).encode(texts[0]) == reference.encode(texts[0]).ids
    (d / "model.safetensors").write_bytes(b"weights the tokenizer is not read from")
    run_corpus(tmp_path, monkeypatch, f"tokenize.tokenizer={d}")  # a rerun: only vocab.json and merges.txt count


def test_given_tokenizer_json_is_copied_beside_the_shards(tmp_path, monkeypatch):
    Tokenizer.train(PAGES, 400).save(str(tmp_path / "tok.json"))
    out = run_corpus(tmp_path, monkeypatch, f"tokenize.tokenizer={tmp_path}/tok.json")
    mixture = json.loads((out / "mixture.json").read_text())
    assert mixture["tokenizer"] == "tokenizer.json"  # the run's own copy: rewriting tok.json leaves it true
    tok = Tokenizer.load(str(tmp_path / "tok.json"))
    assert Tokenizer.load(str(out / "tokenizer.json")).fingerprint == tok.fingerprint
    assert shard_ids(out / "tokens" / "commoncrawl") == [ids + [tok.eod] for ids in tok.encode_batch(kept_texts(out))]


@pytest.mark.parametrize("override, message", [
    ("tokenize.train_sample_bytes=0", "tokenize.train_sample_bytes=0 must be at least 1"),
    ("tokenize.tokenizer={d}/missing", "tokenize.tokenizer='{d}/missing': tokenizer file {d}/missing not found"),
    ("tokenize.tokenizer={d}", "tokenize.tokenizer='{d}': tokenizer directory {d} has no vocab.json and no "
                                 "tokenizer.json (a GPT-2 tokenizer is vocab.json + merges.txt)"),
])
def test_tokenize_settings_are_checked_before_the_run(tmp_path, override, message):
    from data_pipeline.config import load_corpus_config

    (tmp_path / "a.jsonl").write_text("")
    with pytest.raises(ConfigError) as err:
        load_corpus_config(None, [f"input.paths=[{tmp_path}/a.jsonl]", override.format(d=tmp_path)])
    assert str(err.value) == message.format(d=tmp_path)


def test_tokenize_shard_rereads_a_tokenizer_retrained_at_the_same_path(tmp_path):
    from data_pipeline.config import load_corpus_config
    from data_pipeline.io import write_jsonl_gz
    from data_pipeline.stages import tokenize_shard

    (tmp_path / "a.jsonl").write_text("")
    cfg = load_corpus_config(None, [f"input.paths=[{tmp_path}/a.jsonl]", f"output.dir={tmp_path}/out"])
    write_jsonl_gz(str(tmp_path / "out" / "documents" / "commoncrawl" / "00000.jsonl.gz"),
                   [{"text": t} for t in PAGES])
    path = str(tmp_path / "out" / "tokenizer.json")
    for vocab_size in (300, 500):  # a restarted run in the same process retrains in place
        Tokenizer.train(PAGES, vocab_size).save(path)
        tokenize_shard(cfg, 0, path)
        tok = Tokenizer.load(path)
        assert shard_ids(tmp_path / "out" / "work" / "tokens" / "00000") == \
            [ids + [tok.eod] for ids in tok.encode_batch(PAGES)]
