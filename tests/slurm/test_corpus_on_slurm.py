"""The corpus pipeline as Slurm array jobs on the local cluster, against the local executor."""

import os

from tests.conftest import corpus_config
from tests.pipeline.test_resume import same_tree


def test_slurm_executor_gives_the_local_run_byte_for_byte(slurm_cluster, crawl, corpus_run, tmp_path):
    from data_pipeline.slurm_executor import submit

    crawl_dir, _ = crawl
    reference, _, _ = corpus_run
    out = tmp_path / "slurm-run"
    jobs = submit(corpus_config(crawl_dir, out, "executor.kind=slurm"), poll_seconds=0.5)
    assert len(jobs) == 6
    same_tree(str(reference), str(out))
    logs = os.listdir(out / "work" / "slurm")
    assert sum(name.startswith("process-") for name in logs) == 4  # one array task per input file
    assert (out / "stats.json").exists()


def test_unsafe_partition_is_refused():
    import pytest

    from data_pipeline.config import load_corpus_config
    from megagpt.config import ConfigError

    with pytest.raises(ConfigError, match=r"executor.partition='gpu; rm -rf /' may only hold"):
        load_corpus_config(None, ["input.paths=[/etc/hostname]", "executor.kind=slurm", "executor.partition=gpu; rm -rf /"])
