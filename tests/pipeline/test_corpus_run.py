"""The whole corpus run against the planted crawl."""

import glob
import json
import os

from data_pipeline.dedup import jaccard
from data_pipeline.io import read_jsonl_gz


def rows(out, pattern):
    return [r for f in sorted(glob.glob(os.path.join(out, pattern))) for r in read_jsonl_gz(f)]


def test_every_foreign_page_is_dropped_by_langid(corpus_run):
    out, truth, _ = corpus_run
    dropped = {d["record_id"]: d for d in rows(out, "dropped/process/*.jsonl.gz")}
    for rid, lang in truth.foreign.items():
        if rid in dropped or not any(rid == d["record_id"] for d in rows(out, "documents/*/*.jsonl.gz")):
            assert dropped[rid]["stage"] == "langid" and dropped[rid]["reason"] == f"language {lang}"
    kept_ids = {d["record_id"] for d in rows(out, "documents/*/*.jsonl.gz")}
    assert not kept_ids & set(truth.foreign)


def test_broken_records_and_truncated_file_are_counted_with_reasons(corpus_run):
    out, truth, summary = corpus_run
    dropped = {d["record_id"]: d for d in rows(out, "dropped/process/*.jsonl.gz")}
    expected = {"binary": "binary content", "not html": "not html (application/pdf)", "invalid utf-8": "invalid utf-8",
                "empty": "empty record"}
    # the file cut in its last record: that record is a read drop (it was kept, cut short), the file an error
    [cut] = [d for d in dropped.values() if d["stage"] == "read"]
    assert cut["reason"] == "truncated record" and cut["id"].startswith(os.path.basename(truth.truncated_files[0]))
    assert summary["stages"]["read"]["dropped"] == {"truncated record": 1}
    assert [e["file"] for e in summary["errors"]] == truth.truncated_files
    assert summary["errors"][0]["reason"].startswith("truncated gzip after ")
    seen = {kind for rid, kind in truth.broken.items() if rid in dropped and rid != cut["record_id"]}
    for rid, kind in truth.broken.items():
        if rid in dropped and rid != cut["record_id"]:
            assert dropped[rid]["stage"] == "extract" and dropped[rid]["reason"] == expected[kind]
    assert len(seen) >= len(truth.broken) - 1  # every broken record but the one the cut may have held
    stats = json.load(open(os.path.join(out, "stats.json")))
    assert stats["stages"]["extract"]["dropped"]["binary content"] == (1 if "binary" in seen else 0)


def test_stats_give_each_heuristic_filter_its_seconds(corpus_run):
    """Summed over shards, inside the filters stage's own time (the per-filter table of the corpus benchmark)."""
    out, _, summary = corpus_run
    filters = summary["stages"]["filters"]
    assert set(filters["step_seconds"]) == {"words", "gopher_repetition", "gopher_quality", "c4", "fineweb"}
    assert 0 < sum(filters["step_seconds"].values()) <= filters["seconds"] + 0.005  # each of both rounded to 1 ms


def test_dedup_finds_planted_pairs_and_merges_nothing_dissimilar(corpus_run):
    out, truth, summary = corpus_run
    processed = rows(out, "work/process/*.jsonl.gz")
    texts = {d["id"]: d["text"] for d in processed}  # by run id
    record = {d["id"]: d["record_id"] for d in processed}  # the planted truth names WARC-Record-IDs
    reached = set(record.values())
    dups = {record[d["id"]]: {**d, "duplicate_of": record[d["duplicate_of"]]} for d in rows(out, "dropped/dedup/*.jsonl.gz")}
    def merged(a, b, stage):  # whichever came later in the crawl is dropped as a copy of the other
        return any(dups.get(x, {}).get("duplicate_of") == y and dups[x]["stage"] == stage for x, y in ((a, b), (b, a)))

    exact = [(a, b) for a, b in truth.exact_pairs if a in reached and b in reached]
    assert len(exact) >= 15 and all(merged(a, b, "exact-dedup") for a, b in exact)
    similar = [(a, b) for a, b, j in truth.near_pairs if j >= 0.8 and a in reached and b in reached]
    found = sum(merged(a, b, "fuzzy-dedup") for a, b in similar)
    assert len(similar) >= 15 and found / len(similar) >= 0.95
    dissimilar = [(a, b) for a, b, j in truth.near_pairs if j < 0.5 and a in reached and b in reached]
    assert len(dissimilar) >= 10 and not any(merged(a, b, "fuzzy-dedup") for a, b in dissimilar)
    # every merge in the corpus, planted or not (the stdlib repeats some docstrings), joins truly similar pages
    for d in rows(out, "dropped/dedup/*.jsonl.gz"):
        assert jaccard(texts[d["id"]], texts[d["duplicate_of"]]) >= 0.5


def test_every_dedup_drop_names_its_kept_document_and_their_estimated_similarity(corpus_run):
    """Against the planted groups (an original and its exact or near copy): each fuzzy drop names a kept
    document of its own group, and `similarity` is the MinHash estimate of the pair's true 5-gram Jaccard."""
    from data_pipeline.config import DedupConfig

    out, truth, _ = corpus_run
    processed = {d["id"]: d for d in rows(out, "work/process/*.jsonl.gz")}
    kept = {d["id"]: d for d in rows(out, "documents/*/*.jsonl.gz")}
    group = {rid: n for n, pair in enumerate(truth.exact_pairs + truth.near_pairs) for rid in pair[:2]}
    # the stdlib repeats a few docstrings, so a group's page may be kept as an identical unplanted twin
    group_by_text = {processed[i]["text"]: group[d["record_id"]] for i, d in processed.items() if d["record_id"] in group}
    num_perm = DedupConfig().num_perm
    planted = 0
    for d in rows(out, "dropped/dedup/*.jsonl.gz"):
        survivor = kept[d["duplicate_of"]]
        assert (d["duplicate_of_record_id"], d["duplicate_of_url"]) == (survivor["record_id"], survivor["url"])
        true = jaccard(processed[d["id"]]["text"], survivor["text"])
        # each of the num_perm hash values agrees with probability J, independently: the share that agrees
        # has standard deviation sqrt(J(1 - J) / num_perm) (<= 0.047 at 112); 4 of them, plus rounding
        assert abs(d["similarity"] - true) <= 4 * (true * (1 - true) / num_perm) ** 0.5 + 1e-3, (d, true)
        if d["stage"] == "exact-dedup" and "copy_of" not in d:
            assert d["similarity"] == 1.0
        if d["stage"] == "fuzzy-dedup" and d["record_id"] in group:
            planted += 1
            assert group_by_text.get(survivor["text"]) == group[d["record_id"]], d
    assert planted >= 15


def test_outputs_tokens_and_mixture(corpus_run):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megagpt.data.tokenizer import Tokenizer

    out, _, summary = corpus_run
    docs = rows(out, "documents/commoncrawl/*.jsonl.gz")
    assert docs and set(docs[0]) >= {"id", "record_id", "url", "source", "text", "lang", "lang_score"}
    assert len(docs) == summary["documents"] == summary["stages"]["dedup"]["kept"]
    mixture = json.load(open(os.path.join(out, "mixture.json")))
    assert mixture["sources"][0]["source"] == "commoncrawl" and mixture["sources"][0]["weight"] == 1.0
    tok = Tokenizer.load(os.path.join(out, mixture["tokenizer"]))
    ds = IndexedDataset(os.path.join(out, mixture["sources"][0]["prefix"]))
    assert len(ds) == len(docs)
    for i in (0, len(docs) // 2, len(docs) - 1):
        assert ds[i].tolist() == tok.encode(docs[i]["text"]) + [tok.eod]
    assert sum(len(ds[i]) for i in range(len(ds))) == summary["tokens"] == mixture["sources"][0]["tokens"]
    s = summary["stages"]
    assert s["read"]["kept"] == s["extract"]["in"] and s["extract"]["kept"] == s["langid"]["in"]
    assert s["langid"]["kept"] == s["filters"]["in"] and s["filters"]["kept"] == s["dedup"]["in"]
    for stage in ("extract", "langid", "filters"):
        assert s[stage]["in"] == s[stage]["kept"] + sum(s[stage]["dropped"].values())
    assert set(s) == {"read", "extract", "langid", "filters", "dedup"}  # every entry a funnel stage that ran
    assert s["dedup"]["seconds"] > 0  # the MinHash signatures, computed per shard


def test_report_writes_plots_and_a_table(corpus_run):
    from tests.conftest import megagpt

    out, _, summary = corpus_run
    proc = megagpt("corpus", "report", str(out), timeout=120)
    for name in ("funnel", "lengths", "scores"):
        with open(os.path.join(out, "report", f"{name}.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    lines = proc.stdout.splitlines()
    langid = next(line for line in lines if line.startswith("langid"))
    assert langid.split()[1:3] == [str(summary["stages"]["langid"]["in"]), str(summary["stages"]["langid"]["kept"])]
    assert f"documents {summary['documents']}, tokens {summary['tokens']}, file errors 1" in proc.stdout


def test_report_reads_the_documents_shard_by_shard_into_lengths_and_score_counts(corpus_run):
    """The report held every kept document's text at once (hundreds of GB at CommonCrawl's scale): now 4 bytes a
    document and a histogram per score, equal to what the whole list gave."""
    import glob

    import numpy as np

    from data_pipeline.io import read_jsonl_gz
    from data_pipeline.report import SCORE_BINS, _lengths_and_scores

    out, _, summary = corpus_run
    paths = sorted(glob.glob(os.path.join(out, "documents", "*", "*.jsonl.gz")))
    docs = [d for p in paths for d in read_jsonl_gz(p)]
    lengths, scores = _lengths_and_scores(paths)
    assert lengths.dtype == np.int32 and lengths.tolist() == [len(d["text"]) for d in docs]
    assert len(lengths) == summary["documents"]
    assert set(scores) == {"lang_score"}  # no quality model in this run
    assert scores["lang_score"].tolist() == np.histogram([d["lang_score"] for d in docs], bins=SCORE_BINS)[0].tolist()


def test_report_of_a_missing_run_is_one_line(tmp_path):
    from tests.conftest import megagpt

    proc = megagpt("corpus", "report", str(tmp_path / "nope"), check=False, timeout=60)
    assert proc.returncode == 2
    assert "stats.json not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_an_empty_language_list_keeps_every_language_labelled(tmp_path):
    """`langid.languages=[]` dropped every document; an empty list turns a stage's choice off, as for
    url.blocklists and decontam.paths."""
    import random

    from data_pipeline.pipeline import run
    from data_pipeline.synthetic import english_pages, foreign_page
    from tests.conftest import corpus_config

    rng = random.Random(0)
    texts = {"en": english_pages(1)[0], "fr": foreign_page("fr", rng), "de": foreign_page("de", rng)}
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"id": lang, "text": t}) + "\n" for lang, t in texts.items()))
    cfg = corpus_config(tmp_path, tmp_path / "out", f"input.paths=[{tmp_path / 'docs.jsonl'}]", "langid.languages=[]",
                        "filters.enabled=false", "dedup.enabled=false", "tokenize.vocab_size=300",
                        "executor.workers=1")
    run(cfg, progress=False)
    assert {d["record_id"]: d["lang"] for d in rows(str(tmp_path / "out"), "documents/*/*.jsonl.gz")} == \
        {"en": "en", "fr": "fr", "de": "de"}
