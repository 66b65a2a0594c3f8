"""Slurm's task variables -> torch.distributed's, in exactly one place."""

from __future__ import annotations

import re
from typing import Mapping

from megagpt.errors import SlurmError

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand Slurm's compressed host list: 'gpu[01-04,07],login1' -> gpu01..gpu04, gpu07, login1."""
    hosts, entries, depth, current = [], [], 0, ""
    for ch in nodelist:  # split on commas outside brackets
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            entries.append(current)
            current = ""
        else:
            current += ch
    entries.append(current)
    for entry in filter(None, (e.strip() for e in entries)):
        hosts.extend(_expand_entry(entry))
    return hosts


def _expand_entry(entry: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", entry)
    if not match:
        return [entry]
    head, tail = entry[: match.start()], entry[match.end():]
    out = []
    for part in match.group(1).split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise SlurmError(f"cannot parse Slurm node range {part!r} in {entry!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        width = len(lo) if lo.startswith("0") else 0
        for n in range(int(lo), int(hi) + 1):
            out.extend(_expand_entry(f"{head}{str(n).zfill(width)}{tail}"))
    return out


def torch_env_from_slurm(env: Mapping[str, str]) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT for this srun task.

    The rendezvous host is the first node of the job step; the port is derived from the
    job id (so every task agrees without talking) unless MASTER_PORT is already set.
    """
    try:
        rank = int(env["SLURM_PROCID"])
        world = int(env.get("SLURM_STEP_NUM_TASKS") or env["SLURM_NTASKS"])
        local_rank = int(env.get("SLURM_LOCALID", 0))
        nodelist = env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
        job_id = int(env.get("SLURM_JOB_ID", 0))
    except KeyError as exc:
        raise SlurmError(f"Slurm variable {exc.args[0]} is not set; is this an srun task?") from None
    per_node = expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1")
    node = int(env.get("SLURM_NODEID", 0))
    return {
        "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(per_node[min(node, len(per_node) - 1)]),
        "MASTER_ADDR": env.get("MASTER_ADDR") or expand_nodelist(nodelist)[0],
        "MASTER_PORT": env.get("MASTER_PORT") or str(rendezvous_port(job_id, env.get("SLURM_STEP_ID"))),
    }


def rendezvous_port(job_id: int, step_id: str | None) -> int:
    """A port every task of the step derives alike: below Linux's ephemeral range (32768-60999), where the
    kernel hands out ports to outgoing connections, and different for each step of a job."""
    step = int(step_id) if step_id and step_id.isdigit() else 0
    return 15000 + (job_id + 7919 * step) % 17000


def expand_tasks_per_node(spec: str) -> list[int]:
    """Slurm's tasks-per-node list, one entry per node: '4(x2),3' -> [4, 4, 3]."""
    counts = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise SlurmError(f"cannot parse Slurm tasks-per-node {spec!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts
