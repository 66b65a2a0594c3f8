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


def test_tokenize_shard_encodes_an_end_of_document_in_the_text_as_text(tmp_path):
    """A page holding "<|endoftext|>" was two documents to training: tokenizers read it as the EOD id."""
    from data_pipeline.config import load_corpus_config
    from data_pipeline.io import write_jsonl_gz
    from data_pipeline.stages import tokenize_shard

    (tmp_path / "a.jsonl").write_text("")
    cfg = load_corpus_config(None, [f"input.paths=[{tmp_path}/a.jsonl]", f"output.dir={tmp_path}/out"])
    texts = [f"{PAGES[0]} {EOD} {PAGES[1]}", PAGES[2]]
    write_jsonl_gz(str(tmp_path / "out" / "documents" / "commoncrawl" / "00000.jsonl.gz"), [{"text": t} for t in texts])
    path = str(tmp_path / "out" / "tokenizer.json")
    Tokenizer.train(PAGES, 300).save(path)
    tokenize_shard(cfg, 0, path)
    tok = Tokenizer.load(path)
    for ids, text in zip(shard_ids(tmp_path / "out" / "work" / "tokens" / "00000"), texts):
        assert ids.count(tok.eod) == 1 and ids[-1] == tok.eod and tok.decode(ids) == text


@pytest.mark.parametrize("budget", [1, 5_000, 40_000, 10**9])
def test_the_sample_bound_holds_the_sample_with_its_margin_and_no_more(budget):
    """Documents under the bound hold more than SAMPLE_MARGIN x budget, the sample among them; without the last
    of them they would not. A corpus that holds less has no bound (all of it is read)."""
    import random

    from data_pipeline.tokens import SAMPLE_MARGIN, sample_bound

    rng = random.Random(budget)
    shards = [[(f"crawl/{s}.warc.gz:{i}", rng.randrange(1, 3000)) for i in range(rng.randrange(0, 60))]
              for s in range(9)]
    docs = [d for shard in shards for d in shard]
    bound = sample_bound((([i for i, _ in s], [n for _, n in s]) for s in shards), budget, seed=5)
    if sum(n for _, n in docs) <= SAMPLE_MARGIN * budget:
        assert bound is None
        return
    under = sorted((sample_key(5, i), n) for i, n in docs if sample_key(5, i) < bound)
    assert sum(n for _, n in under) > SAMPLE_MARGIN * budget >= sum(n for _, n in under[:-1])
    by_key, total = sorted((sample_key(5, i), n) for i, n in docs), 0
    for key, n in by_key:  # the sample: the run in key order that fits the budget
        total += n
        if total > budget:
            break
        assert key < bound


def test_the_tokenizer_trains_on_the_finalize_candidates_and_equals_one_trained_on_every_document(tmp_path,
                                                                                                 monkeypatch):
    """With a budget under the corpus, the tokenizer reduce reads only the documents finalize set aside (and no
    other), and gives the tokenizer and tokens the read of every document gives. When the candidates hold less
    than the budget (a bound missed by more than its margin) every document is read."""
    from data_pipeline import pipeline, tokens
    from data_pipeline.config import load_corpus_config
    from data_pipeline.io import read_jsonl_gz

    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in english_pages()[:80]))

    def corpus(out, *overrides):
        cfg = load_corpus_config(None, [f"input.paths=[{tmp_path}/a.jsonl]", f"output.dir={tmp_path}/{out}",
                                        "executor.workers=1", "filters.min_words=10", "tokenize.vocab_size=400",
                                        "tokenize.train_sample_bytes=20000", *overrides])
        pipeline.run(cfg, progress=False)
        return tmp_path / out

    every_document = pipeline._documents
    with monkeypatch.context() as m:
        m.setattr(pipeline, "_documents", lambda *a: (_ for _ in ()).throw(AssertionError("read every document")))
        fast = corpus("fast")
    kept = [d["text"] for d in read_jsonl_gz(str(fast / "documents" / "commoncrawl" / "00000.jsonl.gz"))]
    head, *candidates = read_jsonl_gz(str(fast / "work" / "finalize" / "00000.sample.jsonl.gz"))
    candidates = [d["text"] for d in candidates]
    assert head == {"below": json.loads((fast / "work" / "dedup" / "sample.json").read_text())["below"]}
    assert 20000 < size(candidates) < size(kept) / 2 and set(candidates) < set(kept)

    with monkeypatch.context() as m:
        m.setattr(pipeline, "sample_bound", lambda *a: None)
        whole = corpus("whole")
    with monkeypatch.context() as m:
        m.setattr(tokens, "SAMPLE_MARGIN", 0.5)  # candidates short of the budget: every document is read
        calls = []
        m.setattr(pipeline, "_documents", lambda *a: calls.append(1) or every_document(*a))
        short = corpus("short")
    assert calls and size(d["text"] for d in list(read_jsonl_gz(str(short / "work" / "finalize" / "00000.sample.jsonl.gz")))[1:]) < 20000
    for out in (whole, short):
        assert (out / "tokenizer.json").read_bytes() == (fast / "tokenizer.json").read_bytes()
        assert shard_ids(out / "tokens" / "commoncrawl") == shard_ids(fast / "tokens" / "commoncrawl")
    assert not (whole / "work" / "finalize" / "00000.sample.jsonl.gz").exists()

    # candidates set aside under another bound (a finalize task done before the bound changed) are not believed
    from data_pipeline.io import write_jsonl_gz

    path = str(fast / "work" / "finalize" / "00000.sample.jsonl.gz")
    records = list(read_jsonl_gz(path))
    write_jsonl_gz(path, [{"below": records[0]["below"] + 1}] + records[1:], 1)
    cfg = load_corpus_config(None, [f"input.paths=[{tmp_path}/a.jsonl]", f"output.dir={fast}", "tokenize.vocab_size=400",
                                    "executor.workers=1", "filters.min_words=10", "tokenize.train_sample_bytes=20000"])
    with monkeypatch.context() as m:
        calls = []
        m.setattr(pipeline, "_documents", lambda *a: calls.append(1) or every_document(*a))
        pipeline.run_reduce(cfg, "tokenizer")
    assert calls and (fast / "tokenizer.json").read_bytes() == (whole / "tokenizer.json").read_bytes()


def test_the_sample_is_the_key_order_prefix_whatever_the_input_order():
    """A small page met after the run had ended (its key above one already evicted) was let in to fill the space
    left, so the sample depended on input order and was not the run that fits the budget."""
    import random

    rng = random.Random(0)
    for trial in range(200):
        docs = [(f"d{trial}:{i}", "x" * rng.randrange(1, 40)) for i in range(rng.randrange(1, 30))]
        budget = rng.randrange(1, 400)
        expected, total = set(), 0
        for doc_id, text in sorted(docs, key=lambda d: sample_key(1, d[0])):
            total += len(text)
            if total > budget:
                break
            expected.add(doc_id)
        texts = training_sample(iter(docs), budget, seed=1)
        assert texts == [t for i, t in docs if i in expected]
        rng.shuffle(docs)
        assert training_sample(iter(docs), budget, seed=1) == [t for i, t in docs if i in expected]
