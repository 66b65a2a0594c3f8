"""A run killed with SIGKILL and started again ends byte-identical to an uninterrupted run."""

import filecmp
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import CPU_ENV, REPO, corpus_config

OUTPUTS = ("documents", "dropped", "tokens", "mixture.json", "tokenizer.json")


def corpus_cmd(crawl_dir, out):
    return [sys.executable, "-m", "launchers.cli", "corpus", "run", f"input.paths=[{crawl_dir}/*.warc.gz]",
            f"output.dir={out}", "langid.threshold=0.5", "tokenize.vocab_size=2000", "executor.workers=1"]


def same_tree(a, b):
    for name in OUTPUTS:
        pa, pb = os.path.join(a, name), os.path.join(b, name)
        if os.path.isfile(pa):
            assert filecmp.cmp(pa, pb, shallow=False), name
            continue
        for root, _, files in os.walk(pa):
            for f in files:
                rel = os.path.relpath(os.path.join(root, f), a)
                assert filecmp.cmp(os.path.join(a, rel), os.path.join(b, rel), shallow=False), rel
        assert sorted(os.listdir(pa)) == sorted(os.listdir(pb))


@pytest.mark.parametrize("kill_after_markers", [1, 3])
def test_kill_and_resume_is_byte_identical(crawl, corpus_run, tmp_path, kill_after_markers):
    crawl_dir, _ = crawl
    reference, _, _ = corpus_run
    out = tmp_path / "resumed"
    env = {**os.environ, **CPU_ENV}
    proc = subprocess.Popen(corpus_cmd(crawl_dir, out), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    manifest = out / "work" / "manifest" / "process"
    deadline = time.time() + 120
    while time.time() < deadline and (not manifest.exists() or len(os.listdir(manifest)) < kill_after_markers):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Killed after k shards of the first stage finished, well before the run could end.
    assert len(os.listdir(manifest)) >= kill_after_markers
    assert not (out / "stats.json").exists()
    subprocess.run(corpus_cmd(crawl_dir, out), cwd=REPO, env=env, check=True, capture_output=True)
    same_tree(str(reference), str(out))
    assert not [f for root, _, fs in os.walk(out) for f in fs if ".tmp." in f]  # no leftovers


def test_finished_run_redoes_nothing(corpus_run):
    from data_pipeline.executors import LocalExecutor

    out, _, _ = corpus_run
    ran = LocalExecutor(1, progress=False).run(str(out), "process", lambda *a: None, [("00000", ()), ("00001", ())])
    assert ran == 0


def _record_pid(path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(0.1)  # long enough that every process of the pool takes a task: the count below is the pool's size


@pytest.mark.parametrize("workers,at_once,most", [(4, 2, 2), (4, None, 4), (3, 1, 1), (2, 8, 2)])
def test_local_executor_runs_at_most_at_once_tasks_together(tmp_path, workers, at_once, most):
    """A dedup part task holds 1/dedup_parts of a band: with dedup_parts=1 and a worker per core, 14 band tasks at
    once held 14 bands. The pool is sized min(workers, at_once), so no more processes than that ran tasks."""
    from data_pipeline.executors import LocalExecutor

    pids = tmp_path / "pids"
    ran = LocalExecutor(workers, progress=False).run(str(tmp_path), "s", _record_pid,
                                                     [(f"t{i}", (str(pids),)) for i in range(12)], at_once=at_once)
    assert ran == 12 and len(pids.read_text().split()) == 12
    assert len(set(pids.read_text().split())) == most
    assert most == 1 or os.getpid() not in map(int, pids.read_text().split())  # a pool, not this process


@pytest.mark.parametrize("lost", [
    ["documents/commoncrawl/00001.jsonl.gz", "tokens/commoncrawl.bin"],
    ["stats.json"],
    ["work/dedup/00001.json", "work/manifest/finalize/00001.done", "documents/commoncrawl/00001.jsonl.gz"],
    ["work/process/00002.sig.npy", "dropped/process/00002.jsonl.gz"],
], ids=["documents-and-tokens", "stats", "dedup-and-finalize", "process"])
def test_a_finished_run_missing_outputs_makes_them_again(crawl, corpus_run, tmp_path, capsys, lost):
    """A marker says a task finished; its outputs must be there too, or the task is done again (it was trusted:
    a rerun ended with rc 0 and the files missing, or in a FileNotFoundError)."""
    import shutil

    from data_pipeline.pipeline import run

    reference, _, _ = corpus_run
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    for name in lost:
        os.remove(out / name)
    run(corpus_config(crawl[0], out), progress=False)
    same_tree(str(reference), str(out))
    assert (out / "stats.json").read_text() == (reference / "stats.json").read_text()
    err = capsys.readouterr().err
    assert f"megagpt corpus: {lost[0]}" in err and "done again" in err


def test_each_finalize_task_reads_only_its_shards_duplicates(corpus_run):
    """One corpus-wide duplicates file (~75 GB at CommonCrawl's 150M drops) was read whole by every finalize task:
    each shard's file holds that shard's drops, and together they are every dedup drop the run made."""
    import gzip
    import json

    from data_pipeline.runs import recorded_inputs

    out, _, _ = corpus_run
    inputs = recorded_inputs(str(out))
    assert not (out / "work" / "dedup" / "duplicates.json").exists()
    total = 0
    for i, entry in enumerate(inputs):
        found = json.loads((out / "work" / "dedup" / f"{i:05d}.json").read_text())
        assert all(doc_id.startswith(entry["id_prefix"] + ":") for doc_id in found)
        with gzip.open(out / "dropped" / "dedup" / f"{i:05d}.jsonl.gz", "rt") as f:
            assert sorted(found) == sorted(json.loads(line)["id"] for line in f)
        total += len(found)
    assert total > 0


def test_the_run_record_is_read_once_per_version(corpus_run, monkeypatch, tmp_path):
    """A worker parsed run.json (50k inputs, ~20 MB at CommonCrawl's scale) for every shard it processed."""
    import shutil

    from data_pipeline import runs

    out, _, _ = corpus_run
    copy = tmp_path / "out"
    shutil.copytree(out / "work" / "manifest", copy / "work" / "manifest")
    shutil.copy(out / "run.json", copy / "run.json")
    reads = []
    real = runs.read_record
    monkeypatch.setattr(runs, "read_record", lambda d: reads.append(d) or real(d))
    first = [runs.recorded_inputs(str(copy))[i] for i in range(4)]
    assert len(reads) == 1
    record = (copy / "run.json").read_text()
    (copy / "run.json").write_text(record.replace(first[0]["id_prefix"], first[0]["id_prefix"] + "x", 1))
    assert runs.recorded_inputs(str(copy))[0]["id_prefix"] == first[0]["id_prefix"] + "x" and len(reads) == 2


def test_a_slurm_task_does_not_rescan_the_inputs(tmp_path):
    """Every array task globbed and stat-ed every input as it loaded the config (50k files x a thousand tasks at
    once on a shared filesystem); the run recorded its inputs when it started, and tasks read that."""
    from data_pipeline.config import load_corpus_config
    from megagpt.errors import ConfigError

    overrides = [f"input.paths=[{tmp_path}/gone/*.warc.gz]", f"output.dir={tmp_path}/out"]
    with pytest.raises(ConfigError, match="matches no file"):
        load_corpus_config(None, overrides)
    assert load_corpus_config(None, overrides, check_inputs=False).input.paths == [f"{tmp_path}/gone/*.warc.gz"]


def test_dedup_split_across_parts_gives_the_same_run(crawl, corpus_run, tmp_path):
    """executor.dedup_parts changes how the dedup tasks split the corpus, not what they find: a run with 3 parts
    equals the 1-part run, and so does one resumed with 2 parts after its dedup tasks ran with 3 and its reduce
    failed (the other split's outputs, left in work/dedup, are not mixed in). Locally at most dedup_parts part
    tasks run at once, and the tasks' outputs go once the reduce is done."""
    from data_pipeline import pipeline
    from data_pipeline.pipeline import run

    at_once, reduce = {}, pipeline.run_reduce

    class Recording(pipeline.LocalExecutor):  # which stages were held to dedup_parts at once
        def run(self, out_dir, stage, fn, tasks, **kw):
            at_once[stage] = kw.get("at_once")
            return super().run(out_dir, stage, fn, tasks, **kw)

    def failing_dedup(cfg, stage):
        if stage == "dedup":
            raise MemoryError("the dedup reduce ran out of memory")
        reduce(cfg, stage)

    crawl_dir, _ = crawl
    reference, _, _ = corpus_run
    out = tmp_path / "parts"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "LocalExecutor", Recording)
        mp.setattr(pipeline, "run_reduce", failing_dedup)
        with pytest.raises(MemoryError):
            run(corpus_config(crawl_dir, out, "executor.dedup_parts=3"), progress=False)
    assert at_once == {"process": None, "dedup-index": None, "dedup-exact": 3, "dedup-bands": 3}
    assert len(os.listdir(out / "work" / "dedup" / "pairs")) == 14 * 3
    run(corpus_config(crawl_dir, out, "executor.dedup_parts=2"), progress=False)
    same_tree(str(reference), str(out))
    assert sorted(os.listdir(out / "work" / "dedup")) == sorted([f"{n:05d}.json" for n in range(4)] +
                                                                ["sample.json"])
    assert not [d for d in os.listdir(out / "work" / "manifest") if d.startswith("dedup-")]


def test_a_run_from_before_dedup_had_tasks_resumes_without_them(crawl, corpus_run, tmp_path, capsys):
    """A run whose dedup reduce finished before the reduce was split into tasks has no index, exact copies or
    pairs: resuming it must not index every shard again for a reduce that is done, nor call them lost."""
    import shutil

    from data_pipeline.executors import unmark_done
    from data_pipeline.pipeline import run

    crawl_dir, _ = crawl
    reference, _, _ = corpus_run
    out = tmp_path / "older"
    shutil.copytree(reference, out)
    for stage, folder in (("dedup-index", "index"), ("dedup-exact", "exact"), ("dedup-bands", "pairs")):
        shutil.rmtree(out / "work" / "manifest" / stage, ignore_errors=True)  # as the run's own clean-up does
        shutil.rmtree(out / "work" / "dedup" / folder, ignore_errors=True)
    unmark_done(str(out), "summary", "all")
    (out / "stats.json").unlink()
    run(corpus_config(crawl_dir, out), progress=False)
    same_tree(str(reference), str(out))
    assert not (out / "work" / "dedup" / "index").exists()
    assert "dedup-" not in capsys.readouterr().err


def test_lost_dedup_outputs_are_redone_with_the_tasks_they_came_from(crawl, corpus_run, tmp_path):
    """work/dedup lost whole (the index, copies, pairs and drops): the reduce is done again, and so are the tasks
    whose outputs it reads, rather than the rerun failing on a missing file."""
    import shutil

    from data_pipeline.pipeline import run

    crawl_dir, _ = crawl
    reference, _, _ = corpus_run
    out = tmp_path / "lost"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "work" / "dedup")
    run(corpus_config(crawl_dir, out), progress=False)
    same_tree(str(reference), str(out))
    assert not (out / "work" / "dedup" / "pairs").exists()  # made again, and removed after the reduce
