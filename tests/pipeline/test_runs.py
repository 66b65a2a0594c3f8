"""A corpus run knows its config and inputs: reruns resume, refuse, restart or extend; one run per output.dir."""

import errno
import json
import os

import pytest

from data_pipeline.io import read_jsonl_gz
from data_pipeline.synthetic import english_pages
from tests.conftest import megagpt

PAGES = english_pages()[:12]


def write(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


@pytest.fixture
def inputs(tmp_path):
    write(tmp_path / "a.jsonl", PAGES[:4])
    write(tmp_path / "b.jsonl", PAGES[4:8])
    return tmp_path


def corpus(tmp_path, *args, paths="*.jsonl", check=True):
    return megagpt("corpus", "run", f"input.paths=[{tmp_path}/{paths}]", f"output.dir={tmp_path}/out",
                   "tokenize.vocab_size=400", "executor.workers=1", "filters.min_words=10", *args, check=check)


def stats(tmp_path):
    return json.loads((tmp_path / "out" / "stats.json").read_text())


def error_line(proc):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("megagpt: error: "), proc.stderr
    return lines[0]


def test_changed_config_refuses_until_restart(inputs):
    corpus(inputs)
    assert stats(inputs)["documents"] == 8
    corpus(inputs)  # the same run again: resumes, nothing to do
    line = error_line(corpus(inputs, "tokenize.vocab_size=500", check=False))
    assert "holds a run with other settings or inputs (tokenize.vocab_size: 400 -> 500)" in line
    assert "--restart" in line
    corpus(inputs, "tokenize.vocab_size=500", "--restart")
    tokenizer = json.loads((inputs / "out" / "tokenizer.json").read_text())
    assert len(tokenizer["model"]["vocab"]) > 400  # the new size, not the old run's tokenizer


def test_a_file_a_setting_names_rewritten_in_place_refuses_the_rerun(inputs):
    """The path is unchanged, the results would not be: a new benchmark removes other n-grams, a new tokenizer
    gives other ids (the old shards beside it would be read as its ids)."""
    from megagpt.data.tokenizer import Tokenizer

    Tokenizer.train(PAGES, 400).save(str(inputs / "tok.json"))
    benchmark = inputs / "bench.txt"
    benchmark.write_text("zebra quagga okapi " * 10)
    settings = (f"tokenize.tokenizer={inputs}/tok.json", f"decontam.paths=[{benchmark}]")
    corpus(inputs, *settings)
    corpus(inputs, *settings)  # unchanged: resumes
    corpus(inputs, *settings, "tokenize.vocab_size=999")  # a given tokenizer is not trained: resumes
    benchmark.write_text(PAGES[0])
    assert "(decontam.paths: a file's contents changed)" in error_line(corpus(inputs, *settings, check=False))
    benchmark.write_text("zebra quagga okapi " * 10)
    Tokenizer.train(PAGES, 300).save(str(inputs / "tok.json"))
    assert "(tokenize.tokenizer: a file's contents changed)" in error_line(corpus(inputs, *settings, check=False))
    corpus(inputs, *settings, "--restart")
    tokenizer = Tokenizer.load(str(inputs / "out" / "tokenizer.json"))
    assert tokenizer.fingerprint == Tokenizer.load(str(inputs / "tok.json")).fingerprint


def test_restart_removes_the_runs_outputs_and_nothing_else(tmp_path):
    from data_pipeline.runs import OUTPUTS
    from megagpt.dir_lock import LOCK

    out = tmp_path / "out"
    (out / "crawl").mkdir(parents=True)  # the inputs kept inside output.dir, as users do
    write(out / "crawl" / "a.jsonl", PAGES[:4])
    (out / "notes.txt").write_text("mine")
    run = ["corpus", "run", f"input.paths=[{out}/crawl/*.jsonl]", f"output.dir={out}", "tokenize.vocab_size=400",
           "executor.workers=1", "filters.min_words=10"]
    megagpt(*run)
    megagpt("corpus", "report", str(out))
    written = set(os.listdir(out)) - {"crawl", "notes.txt"}
    assert written <= set(OUTPUTS) | {LOCK}, written - set(OUTPUTS)  # --restart knows every name a run writes
    megagpt(*run, "tokenize.vocab_size=500", "--restart")
    assert (out / "notes.txt").read_text() == "mine" and (out / "crawl" / "a.jsonl").exists()
    assert not (out / "report").exists()  # the old run's report went with it
    assert json.loads((out / "stats.json").read_text())["documents"] == 4


def test_added_input_refuses_until_extend_which_redoes_dedup_and_tokens(inputs):
    corpus(inputs)
    before = stats(inputs)
    write(inputs / "c.jsonl", [PAGES[0], *PAGES[8:12]])  # one page repeats a.jsonl's first
    line = error_line(corpus(inputs, check=False))
    assert f"1 input(s) not in its run (first: {inputs}/c.jsonl): --extend to add them" in line
    extended = corpus(inputs, "--extend")
    assert "missing" not in extended.stderr  # the dedup index its first run removed is made again, not "lost"
    after = stats(inputs)
    assert after["stages"]["read"]["in"] == before["stages"]["read"]["in"] + 5
    assert after["documents"] == before["documents"] + 4 and after["tokens"] > before["tokens"]
    dups = list(read_jsonl_gz(str(inputs / "out" / "dropped" / "dedup" / "00002.jsonl.gz")))
    assert [(d["id"], d["duplicate_of"]) for d in dups] == [("c.jsonl:1", "a.jsonl:1")]
    mixture = json.loads((inputs / "out" / "mixture.json").read_text())
    assert mixture["sources"][0]["documents"] == after["documents"]


def test_changed_or_removed_input_refuses(inputs):
    corpus(inputs)
    write(inputs / "b.jsonl", PAGES[4:7])
    assert f"input changed: {inputs}/b.jsonl" in error_line(corpus(inputs, check=False))
    assert f"input removed: {inputs}/b.jsonl" in error_line(corpus(inputs, paths="a.jsonl", check=False))


def test_a_second_concurrent_run_refuses_at_once(inputs):
    from data_pipeline.config import load_corpus_config
    from data_pipeline.runs import Run

    cfg = load_corpus_config(None, [f"input.paths=[{inputs}/*.jsonl]", f"output.dir={inputs}/out",
                                    "tokenize.vocab_size=400", "filters.min_words=10"])
    with Run(cfg):
        line = error_line(corpus(inputs, check=False))
    assert "is in use by another corpus run (pid " in line


def test_output_dir_that_is_a_file_is_one_line(inputs):
    (inputs / "out").write_text("not a directory")
    assert f"output.dir='{inputs}/out' is a file, not a directory" in error_line(corpus(inputs, check=False))


def test_resume_removes_what_a_killed_run_half_wrote(inputs):
    import subprocess

    from data_pipeline.config import load_corpus_config
    from data_pipeline.runs import Run

    cfg = load_corpus_config(None, [f"input.paths=[{inputs}/*.jsonl]", f"output.dir={inputs}/out",
                                    "tokenize.vocab_size=400", "filters.min_words=10"])
    Run(cfg).close()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: the writer SIGKILL took
    stale = inputs / "out" / "documents" / "commoncrawl" / f"00001.jsonl.gz.tmp.{dead.pid}"
    stale.parent.mkdir(parents=True)
    stale.write_text("half")
    live = stale.with_name(f"00002.jsonl.gz.tmp.{os.getpid()}")  # a writer still at work keeps its file
    live.write_text("busy")
    Run(cfg).close()
    assert not stale.exists() and live.exists()


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() on a full disk: no file named


@pytest.mark.parametrize("stage,patch,lost", [
    ("process", "numpy.save", "work/process/00000.sig.npy"),
    ("tokenize", "megagpt.data.shards._write_index", "work/tokens/00000.idx"),
    ("summary", "megagpt.data.shards.shutil.copyfileobj", "tokens/commoncrawl.bin"),
], ids=["process", "tokenize", "summary"])
def test_a_full_disk_is_one_line_naming_the_file_and_the_rerun_finishes_the_run(inputs, monkeypatch, capsys, stage,
                                                                                 patch, lost):
    """A write that failed was a traceback ending in an OSError that named no file; the merge left a corpus-sized
    tokens/<source>.bin.tmp on the full disk."""
    import launchers.cli as cli

    args = ["corpus", "run", f"input.paths=[{inputs}/*.jsonl]", f"output.dir={inputs}/out", "tokenize.vocab_size=400",
            "executor.workers=1", "filters.min_words=10"]
    with monkeypatch.context() as m:
        m.setattr(patch, no_space)
        with pytest.raises(SystemExit) as stop:
            cli.main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.replace("\r", "\n").strip().splitlines()[-1] == \
        f"megagpt: error: {inputs}/out/{lost} cannot be written (No space left on device)"
    assert not [f for _, _, fs in os.walk(inputs / "out") for f in fs if ".tmp" in f]
    assert not (inputs / "out" / "work" / "manifest" / stage).exists()
    with pytest.raises(SystemExit) as stop:
        cli.main(args)  # space freed: the rerun finishes the run
    assert stop.value.code == 0 and stats(inputs)["documents"] == 8


def test_a_malformed_jsonl_line_is_a_counted_drop_that_explain_finds(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(json.dumps({"text": PAGES[0]}).encode() + b'\n{"text": "caf\xe9"}\n')
    corpus(tmp_path, paths="a.jsonl")
    summary = stats(tmp_path)
    assert summary["errors"] == [] and summary["stages"]["read"]["dropped"] == {"invalid utf-8": 1}
    prefix = json.loads((tmp_path / "out" / "run.json").read_text())["inputs"][0]["id_prefix"]
    lines = megagpt("corpus", "explain", "--run", str(tmp_path / "out"), "--id", f"{prefix}:2").stdout.splitlines()
    assert any(line.split()[:3] == ["read", "dropped:", "invalid"] and "line 2, byte 13" in line for line in lines), lines
