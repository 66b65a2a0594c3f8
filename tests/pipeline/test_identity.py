"""Documents are keyed by run id (input path relative to the run's inputs + record index), never by
WARC-Record-ID, URL or a user id: copies, overlapping globs and reused names lose nothing."""

import glob
import json
import os
import shutil

from data_pipeline.io import read_jsonl_gz
from data_pipeline.synthetic import english_pages
from tests.conftest import corpus_config


def rows(out, pattern):
    return [r for f in sorted(glob.glob(os.path.join(str(out), pattern))) for r in read_jsonl_gz(f)]


def run(crawl_dir, out, *overrides):
    from data_pipeline.pipeline import run as run_pipeline

    return run_pipeline(corpus_config(crawl_dir, out, *overrides), progress=False)


def first_whole_file(crawl):
    crawl_dir, truth = crawl
    return sorted(f for f in glob.glob(f"{crawl_dir}/*.warc.gz") if f not in truth.truncated_files)[0]


def test_the_same_file_twice_keeps_one_copy_of_each_document(crawl, tmp_path):
    original = first_whole_file(crawl)
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    copy = shutil.copy(original, copy_dir / os.path.basename(original))
    alone = run(crawl[0], tmp_path / "alone", f"input.paths=[{original}]")
    twice = run(crawl[0], tmp_path / "twice", f"input.paths=[{original}, {copy}]")
    assert twice["documents"] == alone["documents"] > 0
    kept = rows(tmp_path / "twice", "documents/*/*.jsonl.gz")
    dups = rows(tmp_path / "twice", "dropped/dedup/*.jsonl.gz")
    kept_ids = {d["id"] for d in kept}
    copies = [d for d in dups if "copy/" in d["id"]]
    # every document the copy repeats is dropped as an exact duplicate of the original's, named by run id
    assert len(copies) == alone["stages"]["dedup"]["in"]
    assert all(d["stage"] == "exact-dedup" and d["duplicate_of"] in kept_ids for d in copies)
    assert not any("copy/" in k for k in kept_ids)
    assert {d["record_id"] for d in kept} == {d["record_id"] for d in rows(tmp_path / "alone", "documents/*/*.jsonl.gz")}


def test_overlapping_globs_read_each_file_once(crawl, tmp_path):
    crawl_dir, _ = crawl
    one = run(crawl_dir, tmp_path / "one", f"input.paths=[{crawl_dir}/*.warc.gz]")
    both = run(crawl_dir, tmp_path / "both", f"input.paths=[{crawl_dir}/*.warc.gz, '{crawl_dir}/crawl-00[01].warc.gz', "
                                              f"{first_whole_file(crawl)}]")
    assert both["documents"] == one["documents"]
    assert both["stages"]["read"]["in"] == one["stages"]["read"]["in"]
    assert rows(tmp_path / "both", "documents/*/*.jsonl.gz") == rows(tmp_path / "one", "documents/*/*.jsonl.gz")


def write_jsonl(path, docs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))


def test_equal_basenames_and_repeated_record_ids_are_different_documents(tmp_path):
    pages = english_pages()[:6]
    # CommonCrawl-style part names reused per dump, and the same "id" on different texts
    write_jsonl(tmp_path / "in" / "dump1" / "part-00000.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(pages[:3])])
    write_jsonl(tmp_path / "in" / "dump2" / "part-00000.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(pages[3:])])
    summary = run(tmp_path, tmp_path / "out", f"input.paths=[{tmp_path}/in/*/part-00000.jsonl]", "dedup.enabled=true",
                  "tokenize.vocab_size=300", "filters.min_words=10")
    kept = rows(tmp_path / "out", "documents/*/*.jsonl.gz")
    assert summary["documents"] == 6 and not rows(tmp_path / "out", "dropped/dedup/*.jsonl.gz")
    assert sorted(d["id"] for d in kept) == [f"dump{k}/part-00000.jsonl:{line}" for k in (1, 2) for line in (1, 2, 3)]
    by_id = {d["id"]: d for d in kept}
    assert by_id["dump1/part-00000.jsonl:1"]["record_id"] == by_id["dump2/part-00000.jsonl:1"]["record_id"] == "doc0"
    assert by_id["dump1/part-00000.jsonl:1"]["text"] != by_id["dump2/part-00000.jsonl:1"]["text"]


def test_a_partial_redownload_beside_the_full_file_loses_nothing(crawl, tmp_path):
    original = first_whole_file(crawl)
    partial = tmp_path / "redownload" / os.path.basename(original)
    partial.parent.mkdir()
    data = open(original, "rb").read()
    partial.write_bytes(data[: len(data) * 2 // 3])  # cut mid-record, as an interrupted download is
    alone = run(crawl[0], tmp_path / "alone", f"input.paths=[{original}]")
    both = run(crawl[0], tmp_path / "both", f"input.paths=[{original}, {partial}]")
    assert both["documents"] == alone["documents"]  # every shared record kept once, from one of the two
    assert [e["file"] for e in both["errors"]] == [str(partial)]
    assert both["errors"][0]["reason"].startswith("truncated gzip after ")


def test_input_paths_that_name_no_file_say_why(tmp_path):
    import pytest

    from data_pipeline.config import input_files, load_corpus_config
    from megagpt.errors import ConfigError

    (tmp_path / "crawl" / "sub").mkdir(parents=True)
    (tmp_path / "crawl" / "a.warc.gz").write_bytes(b"x")
    for paths, message in [
        (f"[{tmp_path}/crawl]", f"input.paths[0]='{tmp_path}/crawl' is the directory {tmp_path}/crawl: name files "
                                f"(e.g. {tmp_path}/crawl/*.warc.gz)"),
        (f"[{tmp_path}/crawl/*]", f"matches the directory {tmp_path}/crawl/sub: name files"),
        (f"[{tmp_path}/crawl/*.wet.gz]", f"input.paths[0]='{tmp_path}/crawl/*.wet.gz' matches no file"),
    ]:
        with pytest.raises(ConfigError) as err:
            input_files(load_corpus_config(None, [f"input.paths={paths}", f"output.dir={tmp_path}/out"]))
        assert message in str(err.value)
