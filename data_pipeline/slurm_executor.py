"""Running the corpus stages as Slurm jobs: an array job per shard or part stage (one task per input
file or dedup part, or with more of them than the cluster's MaxArraySize, each task every k-th), each
reduce step a single job that depends on the one before.

Tasks are `megagpt corpus task` over a copy of the run's config saved in the output
directory; they honour the same manifest as the local executor, so a requeued or
resubmitted run redoes only unfinished shards. With executor.wait the driver waits
for the queue to drain (asking squeue every executor.poll_seconds) and then names the
first stage that did not finish.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import yaml

from data_pipeline.config import CorpusConfig
from data_pipeline.executors import is_done
from data_pipeline.pipeline import STAGES, forget_lost_outputs, stage_tasks
from data_pipeline.io import write_json
from data_pipeline.runs import SLURM_JOBS, Run
from megagpt.errors import ConfigError, SlurmError
from megagpt.slurm import (DEFAULT_MAX_ARRAY_SIZE, cancel_jobs, check_path, jobs_in_flight, max_array_size, python,
                           pythonpath_line, render, sbatch_line, submit_script, write_script)


def save_config(cfg: CorpusConfig) -> str:
    """The config with absolute paths, as the tasks will read it."""
    cfg = dataclasses.replace(cfg)
    cfg.input = dataclasses.replace(cfg.input, paths=[os.path.abspath(p) for p in cfg.input.paths])
    cfg.output = dataclasses.replace(cfg.output, dir=os.path.abspath(cfg.output.dir))
    path = os.path.join(cfg.output.dir, "work", "corpus-config.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(dataclasses.asdict(cfg), f, sort_keys=False)
    return path


def stage_script(cfg: CorpusConfig, stage: str, count: int, config_path: str, depends_on: str | None,
                 max_tasks: int = DEFAULT_MAX_ARRAY_SIZE) -> str:
    """slurm/corpus.sbatch for one stage of `count` tasks: an array of at most `max_tasks` (sbatch refuses a larger
    one, and a CommonCrawl run has tens of thousands of files), array task i taking tasks i, i + tasks, ..."""
    e = cfg.executor
    logs = os.path.join(os.path.abspath(cfg.output.dir), "work", "slurm")
    kind = dict(STAGES)[stage]
    sharded = kind != "reduce"
    limit = f"%{e.workers}" if e.workers else ""
    tasks = min(count, max_tasks)
    time_limit, mem = {"shard": (e.time, e.mem),
                       "part": (e.dedup_time or e.reduce_time or e.time, e.dedup_mem or e.reduce_mem or e.mem),
                       "reduce": (e.reduce_time or e.time, e.reduce_mem or e.mem)}[kind]
    return render("corpus.sbatch", {
        "job_name": f"megagpt-corpus-{stage}", "cpus_per_task": str(e.cpus_per_task),
        "array_line": sbatch_line("array", f"0-{tasks - 1}{limit}" if sharded else None),
        "stride": str(tasks if sharded else 1),
        "dependency_line": sbatch_line("dependency", f"afterok:{depends_on}" if depends_on else None),
        "partition_line": sbatch_line("partition", e.partition),
        "time_line": sbatch_line("time", time_limit),
        "mem_line": sbatch_line("mem", mem),
        "log": check_path("output.dir", os.path.join(logs, f"{stage}-%A_%a.out" if sharded else f"{stage}-%j.out")),
        # The submitting directory, as for a local run: relative paths in the config mean the same there.
        "workdir": check_path("workdir", os.getcwd()), "python": python(), "pythonpath_line": pythonpath_line(),
        "config": check_path("config", config_path), "stage": stage,
    })


def submit(cfg: CorpusConfig, mode: str = "resume") -> list[str]:
    """Submit every stage; with executor.wait, hold the run's lock until the queue drains and check each stage."""
    run = Run(cfg, mode)
    try:
        forget_lost_outputs(cfg)
        config_path = save_config(cfg)
        slurm_dir = os.path.join(cfg.output.dir, "work", "slurm")
        counts = {stage: len(stage_tasks(cfg, stage)) for stage, _ in STAGES}
        counts = {stage: n for stage, n in counts.items() if n}  # none: dedup's tasks with dedup off or done
        max_tasks = min(max_array_size(), array_share(cfg.executor.max_submit, counts))
        jobs, previous = [], None
        for stage, count in counts.items():
            script = write_script(os.path.join(slurm_dir, f"{stage}.sbatch"),
                                  stage_script(cfg, stage, count, config_path, previous, max_tasks))
            try:
                previous = submit_script(script)
            except SlurmError as exc:
                why = str(exc)
                if "submit limit" in why or "MaxSubmitJob" in why:
                    why += (". The cluster caps the jobs you may queue (sacctmgr show qos format=name,"
                            "maxsubmitjobsperuser): set executor.max_submit to the cap less the jobs you have queued")
                raise SlurmError(why + _cancelled(jobs, list(counts)[:len(jobs)])) from None
            jobs.append(previous)
            write_json(os.path.join(cfg.output.dir, SLURM_JOBS), {"jobs": jobs})  # what a later run waits out
        # now, not after the wait: the run may take hours, and these are what squeue and scancel take
        print(f"megagpt corpus: submitted Slurm jobs {', '.join(jobs)} (logs in {os.path.abspath(slurm_dir)})",
              flush=True)
        if cfg.executor.wait:
            wait_for(jobs, cfg.executor.poll_seconds)
            for stage, _ in STAGES:
                missing = [n for n in stage_tasks(cfg, stage) if not is_done(cfg.output.dir, stage, n)]
                if missing:
                    raise SlurmError(f"Slurm stage {stage} did not finish for {len(missing)} task(s) "
                                     f"(first: {missing[0]}); logs in {cfg.output.dir}/work/slurm")
        return jobs
    finally:
        run.close()


def _cancelled(jobs: list[str], stages: list[str]) -> str:
    """The stages queued before a submission failed are cancelled: they would run a part of the run, and hold its
    output.dir until they ended, which refuses the rerun that fixes the failure."""
    if not jobs:
        return ""
    failed = cancel_jobs(jobs)
    left = jobs_in_flight(jobs) if failed else []  # scancel fails for a job that has ended, and cancels the rest
    if left != []:
        return (f"; the jobs of the stages before it ({', '.join(stages)}: {', '.join(left or jobs)}) are still "
                f"queued, as scancel failed ({failed}): scancel them, or wait for them, before a rerun")
    return (f"; the jobs of the stages before it ({', '.join(stages)}: {', '.join(jobs)}) were cancelled, and a "
            f"rerun keeps the tasks they finished")


def array_share(max_submit: int | None, counts: dict[str, int]) -> int:
    """Tasks each array job may have when the run may queue at most `max_submit` jobs: the reduce steps take one
    each, the arrays share the rest."""
    if max_submit is None:
        return max(counts.values(), default=1)
    reduces = sum(dict(STAGES)[stage] == "reduce" for stage in counts)
    arrays = len(counts) - reduces
    if max_submit < reduces + arrays:
        raise ConfigError(f"executor.max_submit={max_submit} is fewer than the {reduces + arrays} jobs this run "
                          f"queues at the least (a job for each of its stages)")
    return (max_submit - reduces) // max(arrays, 1)


def wait_for(jobs: list[str], poll_seconds: float) -> None:
    """Until Slurm holds none of `jobs`. Ctrl-C stops the wait, not the jobs: they are the run (as with
    executor.wait=false, which does not wait at all), so they are named with how to stop them, not cancelled."""
    try:
        while jobs_in_flight(jobs) != []:  # None (squeue could not tell): ask again
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        left = jobs_in_flight(jobs)
        left = jobs if left is None else left
        if left:
            print(f"megagpt corpus: stopped waiting; the Slurm jobs {', '.join(left)} are still queued or running "
                  f"and go on with the run (scancel {' '.join(left)} stops them)", file=sys.stderr, flush=True)
        raise


def run_task(cfg: CorpusConfig, stage: str, index: int | None, stride: int | None = None) -> None:
    """One array task (index = SLURM_ARRAY_TASK_ID: the stage's tasks index, index + stride, ... each skipped if
    already done; without a stride, task index alone) or one reduce step (skipped if done)."""
    from data_pipeline.executors import mark_done
    from data_pipeline.pipeline import after_reduce, run_reduce
    from data_pipeline.pipeline import run_task as run_one

    out = cfg.output.dir
    if stage not in dict(STAGES):
        raise ConfigError(f"--stage {stage!r} is not one of {', '.join(s for s, _ in STAGES)}")
    if dict(STAGES)[stage] != "reduce":
        names = stage_tasks(cfg, stage)
        if not names:  # dedup's tasks once its reduce is done: a requeued task has nothing left to do
            return
        if index is None:
            raise ConfigError(f"stage {stage} runs per task: give --index or run as a Slurm array task")
        if stride is not None and stride < 1:
            raise ConfigError(f"--stride {stride} must be at least 1")
        if not 0 <= index < len(names):
            raise ConfigError(f"--index {index} is not a task of stage {stage}, which has {len(names)}")
        # stride 1 is an array of one task doing the whole stage (a small executor.max_submit share)
        for task in names[index::stride] if stride else [names[index]]:
            if not is_done(out, stage, task):
                run_one(cfg, stage, task)
                mark_done(out, stage, task)
    else:
        if not is_done(out, stage, "all"):
            run_reduce(cfg, stage)
            mark_done(out, stage, "all")
        after_reduce(cfg, stage)
