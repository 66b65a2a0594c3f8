"""GPT-3 Appendix C decontamination on planted 13-gram overlaps."""

import json

from data_pipeline.decontam import Decontaminator

FILLER = " ".join(f"filler{i}" for i in range(300))  # 300 distinct words, ~2,700 characters
QUESTION = "What is the capital city of the small landlocked country that lies between France and Spain"


def test_overlap_is_cut_with_200_characters_either_side():
    d = Decontaminator([QUESTION + "? Andorra la Vella."])
    text = f"{FILLER} {QUESTION.lower()} {FILLER}"
    pieces, reason, hits, made = d.clean(text)
    assert reason is None and hits == 4 and len(pieces) == made == 2  # 16 words hold four 13-grams
    start = text.index(QUESTION.lower())
    assert pieces[0] == text[: start - 200].strip()
    assert pieces[1] == text[start + len(QUESTION) + 200:].strip()


def test_twelve_shared_words_are_not_contamination():
    d = Decontaminator([QUESTION])
    twelve = " ".join(QUESTION.split()[:12])
    text = f"{FILLER} {twelve} {FILLER}"
    assert d.clean(text) == ([text], None, 0, 1)


def test_short_remainders_and_many_pieces_drop_the_document():
    d = Decontaminator([QUESTION])
    assert d.clean(f"intro {QUESTION} outro") == ([], "nothing left after removing benchmark overlap", 4, 0)
    many = f" {QUESTION} ".join([FILLER] * 12)
    pieces, reason, _, made = d.clean(many)
    assert pieces == [] and reason == "split into more than 10 pieces" and made == 12


def test_a_cut_at_either_end_makes_no_piece():
    """Ten pieces and an overlap at the start or end are ten pieces (the empty edge counted as an eleventh and
    dropped the document)."""
    d = Decontaminator([QUESTION])
    ten = f" {QUESTION} ".join([FILLER] * 10)
    for text in (ten, f"{QUESTION} {ten}", f"{ten} {QUESTION}", f"{QUESTION} {ten} {QUESTION}"):
        pieces, reason, _, made = d.clean(text)
        assert reason is None and made == 10 and len(pieces) == 10


def test_a_piece_too_short_to_keep_is_counted():
    d = Decontaminator([QUESTION])
    pieces, reason, hits, made = d.clean(f"{FILLER} {QUESTION} {FILLER[:400]} {QUESTION} {FILLER}")
    assert reason is None and made == 3 and len(pieces) == 2  # the middle one is under 200 characters


def test_pipeline_removes_planted_benchmark_text(crawl, tmp_path):
    from data_pipeline.io import read_jsonl_gz
    from data_pipeline.pipeline import run
    from tests.conftest import corpus_config

    crawl_dir, truth = crawl
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"text": QUESTION}) + "\n")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"id": "contaminated", "text": f"{FILLER} {QUESTION} {FILLER}"}) + "\n"
                     + json.dumps({"id": "clean", "text": FILLER + " the end"}) + "\n"
                     + json.dumps({"id": "short-middle", "text": f"{FILLER} {QUESTION} {FILLER[:450]} {QUESTION} "
                                                                 f"{FILLER}"}) + "\n")
    out = tmp_path / "out"
    cfg = corpus_config(crawl_dir, out, f"input.paths=[{jsonl}]", f"decontam.paths=[{bench}]", "langid.threshold=0",
                        "langid.languages=[en, la, eo, it, fr, de, es, nl, pt, sv, da, fi, pl, cs, ru, tr]",
                        "filters.enabled=false", "dedup.enabled=false", "tokenize.vocab_size=300")
    summary = run(cfg, progress=False)
    docs = {d["id"]: d for d in read_jsonl_gz(str(out / "documents" / "commoncrawl" / "00000.jsonl.gz"))}
    # run ids (file:line), pieces numbered; the records' own ids stay as a field
    assert {k: d["record_id"] for k, d in docs.items()} == {
        "docs.jsonl:1#0": "contaminated", "docs.jsonl:1#1": "contaminated", "docs.jsonl:2": "clean",
        "docs.jsonl:3#0": "short-middle", "docs.jsonl:3#1": "short-middle"}
    assert all(QUESTION.split()[5] not in docs[k]["text"] for k in ("docs.jsonl:1#0", "docs.jsonl:1#1"))
    assert docs["docs.jsonl:1#0"]["benchmark_ngrams"] == 4 and "benchmark_ngrams" not in docs["docs.jsonl:2"]
    assert summary["stages"]["decontam"]["in"] == 3 and summary["documents"] == 5
    from data_pipeline.explain import explain

    lines = explain(str(out), "docs.jsonl:1#1")
    assert "  decontam  cut around 4 benchmark n-gram(s) into 2 piece(s): 2 kept" in lines
    assert {k: summary["stages"]["decontam"][k] for k in ("cut", "pieces", "short_pieces_dropped")} == {
        "cut": 2, "pieces": 5, "short_pieces_dropped": 1}  # pieces made: the short middle one is not kept
    assert "  decontam  cut around 8 benchmark n-gram(s) into 3 piece(s): 2 kept, 1 under the minimum length " \
           "dropped" in explain(str(out), "docs.jsonl:3")
    assert "  dedup     off" in lines  # dedup.enabled=false: it was said to have kept the document
    assert lines[-1] == "  tokenize  kept: docs.jsonl:1#1 is line 2 of documents/commoncrawl/00000.jsonl.gz, " \
                        "in tokens/commoncrawl.bin/.idx"


def test_cuts_equal_a_set_of_word_tuples_on_random_overlaps():
    """The 64-bit n-gram array finds exactly the windows a set of lower-cased word tuples finds, over texts with
    planted benchmark runs of 11 to 15 words in mixed case, and holds 8 bytes an n-gram."""
    import random
    import re

    import numpy as np

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(60)]
    benchmarks = [" ".join(rng.choice(vocab) for _ in range(rng.randrange(8, 40))) for _ in range(30)]
    d = Decontaminator(benchmarks, n=13, margin=5, min_piece=3)
    tuples = {tuple(w[i:i + 13]) for b in benchmarks for w in [re.findall(r"\w+", b.lower())]
              for i in range(len(w) - 12)}
    assert d.grams.dtype == np.uint64 and len(d.grams) == len(tuples)
    for _ in range(200):
        parts = [" ".join(rng.choice(vocab) for _ in range(rng.randrange(0, 30)))]
        for _ in range(rng.randrange(0, 3)):
            b = rng.choice(benchmarks).split()
            start = rng.randrange(len(b))
            parts += [" ".join(b[start:start + rng.randrange(11, 16)]).upper(),
                      " ".join(rng.choice(vocab) for _ in range(rng.randrange(0, 20)))]
        text = ", ".join(parts)
        found = list(re.finditer(r"\w+", text))
        expected = [i for i in range(len(found) - 12) if tuple(w.group().lower() for w in found[i:i + 13]) in tuples]
        assert d.clean(text)[2] == len(expected)
        if expected:  # the first cut starts margin characters before the first shared window
            assert not d.clean(text)[0] or text.find(d.clean(text)[0][0]) != found[expected[0]].start()


def test_a_benchmark_without_a_full_ngram_removes_nothing():
    d = Decontaminator(["too short"], n=13)
    assert len(d.grams) == 0 and d.clean(f"{FILLER} too short {FILLER}") == ([f"{FILLER} too short {FILLER}"], None, 0, 1)


def test_the_known_benchmark_fields_are_read_where_text_field_is_absent(tmp_path):
    """A RACE line keeps its passage in "article" and its answers in "options": the known fields took only the
    question, and a page copying the passage was kept whole. A source document an export carries along (NQ's
    "document", TriviaQA's "wiki_context") is not benchmark text: its n-grams would cut most of a crawl."""
    import codecs

    from data_pipeline.decontam import benchmark_texts

    passage = " ".join(f"passage{i}" for i in range(20))
    race = {"id": "race-1", "article": passage, "question": "Why?", "options": ["one two", {"nested": "three"}],
            "answer": "A", "label": 2}
    nq = {"question": "who wrote it", "answer": ["someone"], "document": "a whole wikipedia page " * 50}
    rows = [race, nq, {"text": "only this", "question": "not this"}]
    (tmp_path / "b.JSONL").write_bytes(codecs.BOM_UTF8 + "".join(json.dumps(r) + "\n" for r in rows).encode())
    assert list(benchmark_texts(str(tmp_path / "b.JSONL"))) == [
        f"{passage} Why? one two three A", "who wrote it someone", "only this"]
    assert list(benchmark_texts(str(tmp_path / "b.JSONL"), "question, label")) == ["Why?", "who wrote it", "not this"]
    d = Decontaminator(benchmark_texts(str(tmp_path / "b.JSONL")))
    pieces, reason, hits, _ = d.clean(f"{FILLER} {passage} {FILLER}")
    assert reason is None and hits == 8 and "passage10" not in " ".join(pieces)
