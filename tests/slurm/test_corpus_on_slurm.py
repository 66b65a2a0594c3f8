"""The corpus pipeline as Slurm array jobs on the local cluster, against the local executor."""

import os

from tests.conftest import corpus_config
from tests.pipeline.test_resume import same_tree


def test_slurm_executor_gives_the_local_run_byte_for_byte(slurm_cluster, crawl, corpus_run, tmp_path):
    from data_pipeline.slurm_executor import submit

    crawl_dir, _ = crawl
    reference, _, _ = corpus_run
    out = tmp_path / "slurm-run"
    jobs = submit(corpus_config(crawl_dir, out, "executor.kind=slurm", "executor.poll_seconds=0.5"))
    assert len(jobs) == 9
    same_tree(str(reference), str(out))
    logs = os.listdir(out / "work" / "slurm")
    assert sum(name.startswith("process-") for name in logs) == 4  # one array task per input file
    assert sum(name.startswith("dedup-bands-") for name in logs) == 14  # one a band (executor.dedup_parts=1)
    assert (out / "stats.json").exists()


def test_unsafe_partition_is_refused():
    import pytest

    from data_pipeline.config import load_corpus_config
    from megagpt.config import ConfigError

    with pytest.raises(ConfigError, match=r"executor.partition='gpu; rm -rf /' may only hold"):
        load_corpus_config(None, ["input.paths=[/etc/hostname]", "executor.kind=slurm", "executor.partition=gpu; rm -rf /"])


def test_a_run_refuses_while_the_jobs_of_an_earlier_one_work_in_its_output_dir(tmp_path, monkeypatch):
    """executor.wait=false lets the submitting process (and its lock) go while the jobs run: a second run, a
    --restart that removed what they read, was accepted. Slurm itself is faked: the jobs' state is squeue's."""
    import json

    import pytest

    from data_pipeline.config import load_corpus_config
    from data_pipeline.runs import SLURM_JOBS, Run
    from megagpt.config import ConfigError

    (tmp_path / "in.jsonl").write_text('{"text": "hello"}\n')
    cfg = load_corpus_config(None, [f"input.paths=[{tmp_path}/in.jsonl]", f"output.dir={tmp_path}/out"])
    (tmp_path / "out" / "work" / "slurm").mkdir(parents=True)
    (tmp_path / "out" / SLURM_JOBS).write_text(json.dumps({"jobs": ["320", "321"]}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    squeue = bin_dir / "squeue"
    for script, refused in [('echo 320_1; echo 321', True), ("exit 0", False),
                            ('echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1', False)]:
        squeue.write_text(f"#!/bin/sh\n{script}\n")
        squeue.chmod(0o755)
        if refused:
            with pytest.raises(ConfigError, match=r"the Slurm jobs of its run \(320, 321\) are still queued or running"):
                Run(cfg, "restart")
        else:
            Run(cfg, "resume").close()


def test_a_task_index_past_its_stage_is_refused(tmp_path):
    """An array task is named by its index in the stage's tasks; one past them (a script edited by hand, or a
    stage whose tasks changed) must not run another stage's share or nothing silently."""
    import pytest

    from data_pipeline.config import load_corpus_config
    from data_pipeline.runs import Run
    from data_pipeline.slurm_executor import run_task
    from megagpt.config import ConfigError

    (tmp_path / "in.jsonl").write_text('{"text": "hello"}\n')
    cfg = load_corpus_config(None, [f"input.paths=[{tmp_path}/in.jsonl]", f"output.dir={tmp_path}/out",
                                    "executor.dedup_parts=2"])
    Run(cfg, "resume").close()
    with pytest.raises(ConfigError, match=r"--index 28 is not a task of stage dedup-bands, which has 28"):
        run_task(cfg, "dedup-bands", 28)
    with pytest.raises(ConfigError, match=r"--index 1 is not a task of stage process, which has 1"):
        run_task(cfg, "process", 1)
    with pytest.raises(ConfigError, match=r"--stage 'dedup-pairs' is not one of process, dedup-index, dedup-exact"):
        run_task(cfg, "dedup-pairs", 0)


def test_a_stage_sbatch_refuses_cancels_the_stages_queued_before_it(slurm_cluster, crawl, tmp_path):
    """A reduce job asking more memory than any node has is refused at its sbatch, after the process and
    dedup-index arrays were queued: they are cancelled, so the rerun with the setting fixed is not refused
    while they run on."""
    import re
    import time

    import pytest

    from data_pipeline.slurm_executor import submit
    from megagpt.errors import SlurmError
    from megagpt.slurm import jobs_in_flight

    crawl_dir, _ = crawl
    with pytest.raises(SlurmError, match=r"Memory specification can not be satisfied.*the jobs of the stages before "
                                         r"it \(process, dedup-index: \d+, \d+\) were cancelled"):
        submit(corpus_config(crawl_dir, tmp_path / "out", "executor.kind=slurm", "executor.reduce_mem=999999G"))
    with open(tmp_path / "out" / "work" / "slurm" / "jobs.json") as f:
        jobs = re.findall(r"\d+", f.read())
    deadline = time.time() + 60
    while jobs_in_flight(jobs) and time.time() < deadline:  # cancelled jobs pass through COMPLETING
        time.sleep(0.5)
    assert jobs_in_flight(jobs) == []
