"""`megagpt corpus explain`: one document's path through the planted crawl's run, as a user sees it."""

import glob
import os

from data_pipeline.io import read_jsonl_gz
from tests.conftest import megagpt


def rows(out, pattern):
    return [r for f in sorted(glob.glob(os.path.join(str(out), pattern))) for r in read_jsonl_gz(f)]


def explain(out, doc_id):
    return megagpt("corpus", "explain", "--run", str(out), "--id", doc_id, timeout=60).stdout.splitlines()


def stage_line(lines, stage):
    return next(" ".join(line.split()) for line in lines if line.split()[:1] == [stage])


def a_planted_near_duplicate(corpus_run):
    out, truth, _ = corpus_run
    copies = {copy for _, copy, _ in truth.near_pairs}
    return next(d for d in rows(out, "dropped/dedup/*.jsonl.gz") if d["stage"] == "fuzzy-dedup" and d["record_id"] in copies)


def test_a_near_duplicate_names_its_cluster_the_kept_member_and_the_similarity(corpus_run):
    out, _, _ = corpus_run
    dup = a_planted_near_duplicate(corpus_run)
    lines = explain(out, dup["id"])
    assert lines[0].startswith(dup["id"]) and dup["record_id"] in lines[1]
    assert [stage_line(lines, s) for s in ("read", "extract", "filters", "quality")] == \
        ["read passed", "extract passed", "filters passed", "quality off"]
    assert stage_line(lines, "langid").startswith("langid passed (en, score ")
    assert stage_line(lines, "dedup") == (f"dedup dropped: near duplicate (fuzzy-dedup) of {dup['duplicate_of']}, "
                                          f"estimated Jaccard similarity {dup['similarity']}")
    assert f"kept document: record_id {dup['duplicate_of_record_id']}, url {dup['duplicate_of_url']}" in "\n".join(lines)
    cluster = [d for d in rows(out, "dropped/dedup/*.jsonl.gz") if d["duplicate_of"] == dup["duplicate_of"]]
    assert f"cluster of {len(cluster) + 1}: {dup['duplicate_of']} kept" in "\n".join(lines)
    assert any(line.strip().startswith(f"{dup['id']} dropped (this document): near duplicate") for line in lines)
    assert stage_line(lines, "decontam") == "decontam not reached" and stage_line(lines, "tokenize") == "tokenize not reached"


def test_a_kept_document_names_its_output_shard_line_and_the_duplicates_it_outlived(corpus_run):
    out, _, _ = corpus_run
    dup = a_planted_near_duplicate(corpus_run)
    kept_id = dup["duplicate_of"]
    lines = explain(out, kept_id)
    assert stage_line(lines, "dedup") == "dedup kept"
    assert any(line.strip().startswith(f"{dup['id']} dropped: near duplicate, estimated Jaccard similarity "
                                       f"{dup['similarity']} to {kept_id}") for line in lines)
    assert stage_line(lines, "decontam") == "decontam off"
    shard, line_no = next((os.path.basename(f), n) for f in sorted(glob.glob(f"{out}/documents/commoncrawl/*.jsonl.gz"))
                          for n, d in enumerate(read_jsonl_gz(f), 1) if d["id"] == kept_id)
    assert stage_line(lines, "tokenize") == (f"tokenize kept: {kept_id} is line {line_no} of documents/commoncrawl/{shard}, "
                                             f"in tokens/commoncrawl.bin/.idx")


def test_a_filtered_document_says_which_stage_and_rule_dropped_it(corpus_run):
    out, _, _ = corpus_run
    filtered = next(d for d in rows(out, "dropped/process/*.jsonl.gz") if d["stage"] == "filters")
    lines = explain(out, filtered["id"])
    assert stage_line(lines, "langid") == "langid passed"
    assert stage_line(lines, "filters") == f"filters dropped: {filtered['reason']}"
    assert all(stage_line(lines, s) == f"{s} not reached" for s in ("quality", "dedup", "decontam", "tokenize"))
    foreign = next(d for d in rows(out, "dropped/process/*.jsonl.gz") if d["stage"] == "langid")
    assert stage_line(explain(out, foreign["id"]), "langid") == \
        f"langid dropped: {foreign['reason']} (lang={foreign['lang']}, lang_score={foreign['lang_score']})"


def test_an_unknown_id_or_a_directory_that_is_no_run_is_one_line(corpus_run, tmp_path):
    out, _, _ = corpus_run
    prefix = rows(out, "documents/*/*.jsonl.gz")[0]["id"].rpartition(":")[0]
    dup = a_planted_near_duplicate(corpus_run)["id"]
    for run_dir, doc_id, message in [
            (out, f"{prefix}:99999", f"'{prefix}:99999': no such document in the run at {out}"),
            (out, f"{prefix}:99999", "or a record that holds no page (request, metadata, revisit, warcinfo: counted"),
            (out, "elsewhere/crawl.warc.gz:3", f"'elsewhere/crawl.warc.gz:3': no input 'elsewhere/crawl.warc.gz'"),
            (out, "17", "'17' is not a document id"),
            (out, f"{dup}#1", f"'{dup}#1': {dup} was dropped whole at fuzzy-dedup (near duplicate), so it has no piece #1"),
            (tmp_path, f"{prefix}:0", f"{tmp_path} is not a corpus run: no run.json there")]:
        proc = megagpt("corpus", "explain", "--run", str(run_dir), "--id", doc_id, check=False, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_the_summary_counts_the_records_skipped_as_holding_no_page():
    from data_pipeline.report import summary_table

    stats = {"stages": {"read": {"in": 3, "kept": 3, "dropped": {}, "skipped": {"request record": 3,
                                                                             "warcinfo record": 1}}},
             "documents": 3, "tokens": 30, "errors": []}
    assert "records holding no page, skipped: 4 (request record 3, warcinfo record 1)" in summary_table(stats)


def test_a_jsonl_documents_index_is_its_line_number(tmp_path):
    """JSONL ids count lines from 1 (WARC records from 0): explain says "line", and an id :0 says why it is none.
    The file's name holds a #, which explain took for the start of a piece number."""
    (tmp_path / "docs#1.jsonl").write_text('{"text": 12345}\n')
    out = tmp_path / "run"
    megagpt("corpus", "run", f"input.paths=[{tmp_path / 'docs#1.jsonl'}]", f"output.dir={out}", "executor.workers=1",
            timeout=300)
    lines = explain(out, "docs#1.jsonl:1")
    assert lines[0] == f"docs#1.jsonl:1  (input {tmp_path / 'docs#1.jsonl'}, line 1)"
    assert stage_line(lines, "extract") == "extract dropped: text is a number, not a string"
    for doc_id, message in [("docs#1.jsonl:0", "(docs#1.jsonl has no line 0: a JSONL document's index is its line "
                                               "number, from 1)"),
                            ("docs#1.jsonl:2", "(docs#1.jsonl has no line 2: fewer lines, or lost to damage"),
                            ("docs#1.jsonl", "is not a document id (<input path>:<record index>[#piece], "
                                             "e.g. docs#1.jsonl:1)"),
                            ("docs#1.jsonl:1#2", "docs#1.jsonl:1 was dropped whole at extract")]:
        proc = megagpt("corpus", "explain", "--run", str(out), "--id", doc_id, check=False, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_a_piece_number_is_only_the_trailing_one():
    from data_pipeline.explain import _split_piece

    assert [_split_piece(i) for i in ("cc#1.warc.gz:0", "cc#1.warc.gz:0#3", "a.warc.gz:5#2", "a.warc.gz:5", "x#y")] == \
        [("cc#1.warc.gz:0", ""), ("cc#1.warc.gz:0", "3"), ("a.warc.gz:5", "2"), ("a.warc.gz:5", ""), ("x#y", "")]
