"""`megagpt submit {pretrain,sft,rm,ppo}`: render slurm/pretrain.sbatch for a config and a node count, then sbatch it.

Every training command runs the same way under Slurm (one task per GPU, USR1 before the time
limit, requeue), so one template serves them all; the command is its only difference."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

from megagpt.config import Config, check_stage_inputs, load_config, parse_override, shipped_config, validate
from megagpt.errors import ConfigError
from megagpt.slurm import (check_log_dir, check_name, check_partition, check_path, check_time, python,
                           pythonpath_line, quote_all, render, sbatch_line, submit_script, time_seconds, write_script)

SAVE_LEAD_S = 600  # --save-lead's default: seconds before the time limit that Slurm signals the job to save
MAX_SIGNAL_LEAD_S = 65535  # sbatch --signal's largest sig_time


@dataclass
class PretrainJob:
    config: str
    overrides: list
    nodes: int
    gpus_per_node: Optional[int] = None  # one task per GPU
    cpu_tasks_per_node: Optional[int] = None  # CPU-only clusters: this many tasks, no GPU request
    cpus_per_task: int = 8
    partition: Optional[str] = None
    time: Optional[str] = None
    job_name: str = "megagpt-pretrain"
    command: str = "pretrain"  # pretrain | sft | rm | ppo | finetune
    save_lead: int = SAVE_LEAD_S

    @property
    def tasks_per_node(self) -> int:
        return self.gpus_per_node or self.cpu_tasks_per_node or 0


def check_job(job: PretrainJob) -> Config:
    """Every value the script will hold, and the layout the world size must fit; returns the config."""
    if job.nodes < 1:
        raise ConfigError(f"--nodes={job.nodes} must be at least 1")
    if (job.gpus_per_node is None) == (job.cpu_tasks_per_node is None):
        raise ConfigError("give one of --gpus-per-node (GPU nodes) or --cpu-tasks-per-node (CPU-only nodes)")
    if job.tasks_per_node < 1:
        which = "--gpus-per-node" if job.gpus_per_node is not None else "--cpu-tasks-per-node"
        raise ConfigError(f"{which}={job.tasks_per_node} must be at least 1")
    if job.cpus_per_task < 1:
        raise ConfigError(f"--cpus-per-task={job.cpus_per_task} must be at least 1")
    check_name("--job-name", job.job_name)
    if job.partition is not None:
        check_partition(job.partition)
    lead = job.save_lead
    if not 1 <= lead <= MAX_SIGNAL_LEAD_S:
        raise ConfigError(f"--save-lead={lead} must be 1..{MAX_SIGNAL_LEAD_S} seconds (sbatch --signal's range)")
    if job.time is not None:
        check_time("--time", job.time)
        limit = time_seconds(job.time)
        # Slurm may signal up to 60 s before the lead it was given (sbatch(1)): the job would save and requeue
        # before a step, or before the trainer could take the signal
        if limit is not None and limit <= lead + 60:
            raise ConfigError(f"--time {job.time}: the job is signalled {lead}-{lead + 60} s before its time limit "
                              f"to save and requeue (--save-lead {lead}); give it more than {(lead + 60) // 60} "
                              f"minutes, or a shorter --save-lead")
    check_path("--config", job.config)
    for item in job.overrides:
        parse_override(item)
    cfg = load_config(job.config, job.overrides)
    check_log_dir("run.dir", cfg.run.dir)
    check_save_lead(cfg.run.dir, lead)
    world = job.nodes * job.tasks_per_node
    p = cfg.parallel
    if world % (p.tp * p.pp):
        raise ConfigError(f"{job.nodes} nodes x {job.tasks_per_node} tasks = {world} ranks, not a multiple of "
                          f"parallel.tp*parallel.pp={p.tp}*{p.pp}: the layout cannot use them all")
    if job.nodes > 1 and job.tasks_per_node % p.tp:
        # megatron-core's tensor-parallel groups are consecutive ranks: they cross a node boundary
        print(f"megagpt: note: parallel.tp={p.tp} does not divide the {job.tasks_per_node} tasks per node: some "
              f"tensor-parallel groups span two nodes, and their all-reduces (several per layer) cross the network",
              file=sys.stderr)
    check_stage_inputs(cfg, job.command)
    validate(cfg, world)
    if job.cpu_tasks_per_node is not None and cfg.train.precision == "fp16":
        raise ConfigError("train.precision=fp16 needs a GPU (DeepSpeed has no fp16 on CPU), and "
                          "--cpu-tasks-per-node asks for none; use fp32 or bf16, or --gpus-per-node")
    if job.cpu_tasks_per_node is not None and cfg.run.device == "cuda":  # every task would stop on its node
        raise ConfigError("run.device=cuda needs a GPU per task, and --cpu-tasks-per-node asks for none; use "
                          "run.device=cpu (or auto), or --gpus-per-node")
    if job.command == "ppo":
        from megagpt.rlhf.layout import parse_layout

        parse_layout(cfg, world)
    return cfg


def check_save_lead(run_dir: str, lead: int) -> None:
    """A resubmitted run knows how long it saves (run.dir/checkpoint_io.jsonl): a lead shorter than that has Slurm
    kill the job mid-save at its time limit, and a job that times out is not requeued."""
    record = os.path.join(run_dir, "checkpoint_io.jsonl")
    if not os.path.isfile(record):
        return
    saves = []
    with open(record, errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a full disk or a kill: the others still tell
                continue
            if isinstance(entry, dict) and entry.get("event") == "save" and isinstance(entry.get("seconds"), (int, float)):
                saves.append(entry["seconds"])
    if saves and max(saves) >= lead:
        raise ConfigError(f"--save-lead {lead}: this run's saves took up to {max(saves):.0f} s ({record}); Slurm "
                          f"would kill the job mid-save at its time limit. Give a --save-lead above that plus a step")


def render_pretrain(job: PretrainJob) -> tuple[str, Config]:
    cfg = check_job(job)
    run_dir = os.path.abspath(cfg.run.dir)
    # The tasks must train the run we checked: pin run.dir to the absolute path. And the device the job asked for:
    # a GPU job's ranks take their GPUs or stop with the reason, never fall back to CPU on a node where run.device=auto
    # would (a task that sees too few GPUs); a CPU job's stay on CPU on GPU nodes too.
    overrides = [o for o in job.overrides if not o.startswith("run.dir=")] + [f"run.dir={run_dir}", "train.progress=false"]
    if cfg.run.device == "auto":
        overrides.append("run.device=" + ("cuda" if job.gpus_per_node else "cpu"))
    script = render("pretrain.sbatch", {
        "job_name": job.job_name, "nodes": str(job.nodes), "tasks_per_node": str(job.tasks_per_node),
        "cpus_per_task": str(job.cpus_per_task), "save_lead": str(job.save_lead),
        "gpus_line": sbatch_line("gpus-per-node", job.gpus_per_node),
        "partition_line": sbatch_line("partition", job.partition), "time_line": sbatch_line("time", job.time),
        "log_dir": os.path.join(run_dir, "slurm"), "workdir": check_path("workdir", os.getcwd()),
        "python": python(), "pythonpath_line": pythonpath_line(), "command": job.command,
        "config": check_path("--config", shipped_config(job.config)),
        "overrides": quote_all(overrides),
        "run_dir": run_dir,
    })
    return script, cfg


def submit_pretrain(job: PretrainJob, dry_run: bool) -> str:
    """The script (dry run) or the job id."""
    script, cfg = render_pretrain(job)
    if dry_run:
        return script
    path = write_script(os.path.join(os.path.abspath(cfg.run.dir), "slurm", f"{job.command}.sbatch"), script)
    return submit_script(path)
