"""Mixing finished corpus runs by weight, and training-time sampling that honours the weights."""

import json

import numpy as np
import pytest

from data_pipeline.config import load_corpus_config
from data_pipeline.mixture import load_mix_config, mix
from data_pipeline.pipeline import run
from data_pipeline.synthetic import english_pages
from megagpt.config import ConfigError, load_config
from megagpt.data.tokenizer import Tokenizer
from megagpt.errors import DataError


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("mix")
    pages = english_pages()
    tokenizer = base / "shared-tokenizer.json"
    Tokenizer.train(pages, 1000).save(str(tokenizer))
    runs = {}
    for name, docs in (("books", pages[:150]), ("wiki", pages[150:300])):
        src = base / f"{name}.jsonl"
        src.write_text("".join(json.dumps({"id": f"{name}{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
        runs[name] = base / f"run-{name}"
        run(load_corpus_config(None, [f"input.paths=[{src}]", f"output.dir={runs[name]}", f"input.source={name}",
                                      "langid.threshold=0.5", f"tokenize.tokenizer={tokenizer}", "executor.workers=1"]),
            progress=False)
    return base, runs


def test_mix_writes_weights_tokens_and_epochs(two_runs):
    base, runs = two_runs
    cfg = load_mix_config(None, [f"mixture.sources=[{{source: books, run: {runs['books']}, weight: 3}}, "
                                 f"{{source: wiki, run: {runs['wiki']}, weight: 1}}]",
                                 "mixture.token_budget=100000", f"mixture.out={base / 'mixed'}"])
    summary = mix(cfg)
    books, wiki = summary["sources"]
    assert (books["weight"], wiki["weight"]) == (0.75, 0.25)
    assert books["epochs"] == round(0.75 * 100000 / books["tokens"], 4) and books["tokens"] > 10000
    on_disk = json.loads((base / "mixed" / "mixture.json").read_text())
    assert on_disk == summary


def test_training_samples_follow_the_mixture(two_runs, world_of_one, tmp_path):
    from megagpt.data.datasets import build_datasets

    base, runs = two_runs
    mix(load_mix_config(None, [f"mixture.sources=[{{source: books, run: {runs['books']}, weight: 0.7}}, "
                               f"{{source: wiki, run: {runs['wiki']}, weight: 0.3}}]", f"mixture.out={tmp_path}"]))
    cfg = load_config(None, [f"data.mixture={tmp_path / 'mixture.json'}", "model.seq_length=32", "model.vocab_size=1000",
                             f"run.dir={tmp_path}"])
    train, _ = build_datasets(cfg, train_samples=5000, valid_samples=10)
    shares = np.bincount(train.dataset_index[:5000], minlength=2) / 5000
    assert shares == pytest.approx([0.7, 0.3], abs=0.01)


def test_mixing_runs_with_different_tokenizers_is_refused(two_runs, tmp_path):
    base, runs = two_runs
    other = tmp_path / "other"
    other.mkdir()
    mixture = json.loads((runs["wiki"] / "mixture.json").read_text())
    Tokenizer.train(["something else entirely"] * 10, 300).save(str(other / "tokenizer.json"))
    for ext in (".bin", ".idx"):
        (other / "tokens").mkdir(exist_ok=True)
        (other / "tokens" / f"wiki{ext}").write_bytes((runs["wiki"] / "tokens" / f"wiki{ext}").read_bytes())
    (other / "mixture.json").write_text(json.dumps({**mixture, "tokenizer": "tokenizer.json"}))
    cfg = load_mix_config(None, [f"mixture.sources=[{{source: books, run: {runs['books']}, weight: 1}}, "
                                 f"{{source: wiki, run: {other}, weight: 1}}]", f"mixture.out={tmp_path / 'm'}"])
    with pytest.raises(ConfigError, match="mixture sources use different tokenizers"):
        mix(cfg)
    with pytest.raises(ConfigError, match="has no mixture.json"):
        mix(load_mix_config(None, [f"mixture.sources=[{{source: x, run: {tmp_path / 'nope'}, weight: 1}}]"]))
    (other / "tokenizer.json").unlink()
    with pytest.raises(DataError, match=f"{other / 'mixture.json'} names tokenizer {other / 'tokenizer.json'}, which"):
        mix(cfg)


def test_two_runs_of_one_source_name_are_told_apart_by_a_name_of_their_own(two_runs, tmp_path):
    """Both were written as "books": training keys shards (and checkpoints record them) by these names."""
    import shutil

    base, runs = two_runs
    again = tmp_path / "run-books-2"
    shutil.copytree(runs["books"], again)
    first = f"{{source: books, run: {runs['books']}, weight: 1}}"
    with pytest.raises(ConfigError, match=r"mixture.sources\[1\] and mixture.sources\[0\] are both called 'books'"):
        mix(load_mix_config(None, [f"mixture.sources=[{first}, {{source: books, run: {again}, weight: 1}}]",
                                   f"mixture.out={tmp_path / 'm'}"]))
    summary = mix(load_mix_config(None, [f"mixture.sources=[{first}, {{source: books, run: {again}, weight: 1, "
                                         f"name: books-2}}]", f"mixture.out={tmp_path / 'm'}"]))
    assert [s["source"] for s in summary["sources"]] == ["books", "books-2"]
    with pytest.raises(ConfigError, match="mixture.token_budget=-1000 must be at least 1"):
        mix(load_mix_config(None, [f"mixture.sources=[{{source: books, run: {runs['books']}, weight: 1}}]",
                                   "mixture.token_budget=-1000", f"mixture.out={tmp_path / 'm'}"]))


@pytest.mark.parametrize("weights,message", [
    (("1e308", "1e308"), r"weights sum to inf: give them on a smaller scale"),  # each finite: shares were all 0.0
    (("true", "1"), r"needs source, run and a numeric weight"),  # float(True) made it 1.0
    (("nan", "1"), r"weight=nan must be finite and positive"), (("0", "1"), r"weight=0.0 must be finite and positive"),
])
def test_weights_that_make_no_mixture_are_refused(two_runs, tmp_path, weights, message):
    base, runs = two_runs
    with pytest.raises(ConfigError, match=message):
        mix(load_mix_config(None, [f"mixture.sources=[{{source: books, run: {runs['books']}, weight: {weights[0]}}}, "
                                   f"{{source: wiki, run: {runs['wiki']}, weight: {weights[1]}}}]",
                                   f"mixture.out={tmp_path / 'm'}"]))


def test_a_run_that_read_nothing_says_so(tmp_path):
    """A file of blank lines is a file error, and no stage is blamed for removing what was never read."""
    from data_pipeline.pipeline import kept_nothing_why

    (tmp_path / "blank.jsonl").write_text("\n   \n\n")
    summary = run(load_corpus_config(None, [f"input.paths=[{tmp_path / 'blank.jsonl'}]", f"output.dir={tmp_path / 'o'}",
                                            "executor.workers=1"]), progress=False)
    assert [e["reason"] for e in summary["errors"]] == ["no records: only blank lines"]
    assert kept_nothing_why(summary["kept_nothing"]) == "no record was read (the file errors are in stats.json)"
    with pytest.raises(ConfigError, match=r"kept no documents \(no record was read"):
        mix(load_mix_config(None, [f"mixture.sources=[{{source: web, run: {tmp_path / 'o'}, weight: 1}}]"]))


def test_a_run_that_kept_nothing_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "stats.json").write_text(json.dumps(
        {"kept_nothing": {"stage": "langid", "dropped": 5, "in": 5}}))
    with pytest.raises(ConfigError, match=r"kept no documents \(stage langid removed the most \(5 of 5\)\)"):
        mix(load_mix_config(None, [f"mixture.sources=[{{source: web, run: {tmp_path / 'empty'}, weight: 1}}]"]))


def test_a_small_weight_keeps_its_share_and_training_takes_it(tmp_path):
    """Weights were rounded to 6 decimals: 1 against 3,000,000 became 0.0 (training refused the mixture.json:
    weights must be positive) and 1.5e-6 became 2e-6 (a third more). They keep 6 significant digits."""
    from megagpt.data.checks import check_training_data
    from megagpt.data.shards import write_shard

    docs = [f"Document {i}: a few words to tokenize, and a few more." for i in range(20)]
    tok = Tokenizer.train(docs, vocab_size=300)
    for name in ("web", "rare"):
        run_dir = tmp_path / name
        (run_dir / "tokens").mkdir(parents=True)
        tok.save(str(run_dir / "tokenizer.json"))
        write_shard(str(run_dir / "tokens" / name), docs, tok)
        (run_dir / "mixture.json").write_text(json.dumps({"tokenizer": "tokenizer.json", "sources": [
            {"source": name, "prefix": f"tokens/{name}", "weight": 1.0, "documents": 20, "tokens": 400}]}))
    summary = mix(load_mix_config(None, [f"mixture.sources=[{{source: web, run: {tmp_path / 'web'}, weight: 3000000}}, "
                                         f"{{source: rare, run: {tmp_path / 'rare'}, weight: 1}}]",
                                         f"mixture.out={tmp_path / 'mixed'}"]))
    web, rare = (s["weight"] for s in summary["sources"])
    assert rare == pytest.approx(1 / 3000001, rel=1e-5) and web == pytest.approx(1.0)
    check_training_data(load_config(None, [f"data.mixture={tmp_path / 'mixed' / 'mixture.json'}",
                                           "model.vocab_size=300", "data.split=100,0,0", f"run.dir={tmp_path / 'run'}"]))
