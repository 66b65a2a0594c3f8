"""Rendering the Slurm batch templates and handing them to sbatch; telling an srun task apart.

The templates are the repository's slurm/*.sbatch, shipped inside the package as
`megagpt.slurm_templates` (see pyproject.toml), so an installed megagpt renders them
from any directory. Both `megagpt submit` and the corpus pipeline's Slurm executor
use this module, which is why it lives in megagpt, the package both may import.

Every value that reaches a script is checked here first: names and partitions are
plain words, times are Slurm time formats, paths hold no whitespace or shell
characters (they also land on `#SBATCH` lines, which sbatch parses without a shell;
a log's directory holds no %, which `--output` reads as a pattern),
and command arguments are shell-quoted. A bad value is a one-line ConfigError before
anything is written or submitted; sbatch missing or refusing a script is a SlurmError.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import resources
from typing import Mapping

from megagpt.errors import ConfigError, SlurmError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)
_PATH = re.compile(r"[A-Za-z0-9_./@+,:=~%-]+")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def in_slurm_step(env: Mapping[str, str]) -> bool:
    """True inside an `srun` task (not in the batch script itself, whose step id is 'batch' or unset, nor in
    salloc's interactive step, 4294967290)."""
    step = env.get("SLURM_STEP_ID")
    return "SLURM_PROCID" in env and step is not None and step not in ("batch", "extern", "4294967294", "4294967291",
                                                                       "4294967290")


def template_path(template: str) -> str:
    """The installed copy of slurm/<template>."""
    return str(resources.files("megagpt.slurm_templates") / template)


def check_name(key: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ConfigError(f"{key}={value!r} may only hold letters, digits and . _ - (and must not start with . _ -)")
    return value


def check_time(key: str, value: str) -> str:
    if not _TIME.fullmatch(value):
        raise ConfigError(f"{key}={value!r} is not a Slurm time (MINUTES, HH:MM:SS or D-HH:MM:SS)")
    return value


_MEM = re.compile(r"\d+[KMGT]?", re.IGNORECASE)


def check_mem(key: str, value: str) -> str:
    if not _MEM.fullmatch(value):
        raise ConfigError(f"{key}={value!r} is not a Slurm memory size (e.g. 8G, 500M, or 0 for all of a node's)")
    return value


def time_seconds(value: str) -> int | None:
    """A checked Slurm time in seconds (None: no limit, as sbatch reads UNLIMITED, INFINITE and 0), read as sbatch
    reads it: MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS[:MINUTES[:SECONDS]]."""
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, rest = value.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
        seconds = ((int(days) * 24 + h) * 60 + m) * 60 + s
    elif len(parts) == 3:
        seconds = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    else:
        seconds = parts[0] * 60 + (parts[1] if len(parts) == 2 else 0)
    return seconds or None


def check_path(key: str, value: str) -> str:
    value = os.path.abspath(value)
    if not _PATH.fullmatch(value):
        raise ConfigError(f"{key}={value!r}: paths used in Slurm scripts may only hold letters, digits and "
                          f"_ . / @ + , : = ~ % - (no spaces, quotes or shell characters)")
    return value


SINFO_TIMEOUT_S = 5  # a controller answers in well under a second; sinfo without one retries for about 10 s


def check_log_dir(key: str, value: str) -> str:
    """check_path for a directory that holds the job's log: `#SBATCH --output` reads % as a pattern (%j: the job id),
    so run.dir=runs/lr%j sent the log into a directory that does not exist."""
    value = check_path(key, value)
    if "%" in value:
        raise ConfigError(f"{key}={value!r}: sbatch would read the % in the job's log path as a pattern "
                          f"(%j: the job id); use a path without %")
    return value


def check_partition(partition: str, key: str = "--partition", ask_cluster: bool = True) -> str:
    """Plain words, one or several joined by commas (sbatch runs a job on whichever has room first), that the
    cluster knows (when sinfo is here to answer: else sbatch is left to tell)."""
    names = partition.split(",")
    for name in names:
        check_name(key, name)
    if ask_cluster and shutil.which("sinfo"):
        try:  # -a: hidden partitions, and those of other groups, which a user may still be allowed on
            proc = subprocess.run(["sinfo", "-a", "-h", "-o", "%R"], capture_output=True, text=True,
                                  timeout=SINFO_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            return partition
        known = sorted(set(proc.stdout.split()))
        unknown = [name for name in names if name not in known]
        if proc.returncode == 0 and unknown:
            raise ConfigError(f"{key}={partition!r}: no such Slurm partition {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(known) or 'none'})")
    return partition


def render(template: str, values: dict[str, str]) -> str:
    """Fill `{{name}}` placeholders of slurm/<template>; every placeholder must have a value."""
    path = template_path(template)
    with open(path) as f:
        text = f.read()
    missing = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise SlurmError(f"{path}: no value for {', '.join(missing)}")
    lines = []
    for line in text.splitlines(keepends=True):
        filled = _PLACEHOLDER.sub(lambda m: values[m.group(1)], line)
        if filled.strip() or not line.strip():  # an optional #SBATCH line left empty is dropped
            lines.append(filled)
    return "".join(lines)


def sbatch_line(option: str, value) -> str:
    return f"#SBATCH --{option}={value}" if value not in (None, "") else ""


def python() -> str:
    return check_path("python", sys.executable)


_PACKAGES = ("launchers", "data_pipeline", "megagpt")  # the distribution's top-level packages


@functools.lru_cache(maxsize=1)
def pythonpath_line() -> str:
    """The job runs the megagpt this process imported, which submit's checks ran: the templates start Python
    with -P, so the directory the job starts in (the submitting one: a project's own data_pipeline/ or
    launchers/ there would shadow ours) is not on sys.path, and this line puts back where ours came from when
    `python -P` alone would not find it there (a clone run as `python -m launchers.cli`, another clone's editable
    install). Empty where it would (site-packages, an editable install of this copy): a clone's root put before
    the standard library could shadow it."""
    ours = {name: os.path.abspath(importlib.util.find_spec(name).origin) for name in _PACKAGES}  # found, not imported
    probe = ("import importlib.util as u, sys\n"
             "for n in sys.argv[1:]: s = u.find_spec(n); print(s.origin if s and s.origin else '')")
    try:  # the job's interpreter and environment (sbatch passes the submitting one on), without the job's cwd
        found = subprocess.run([sys.executable, "-P", "-c", probe, *_PACKAGES], capture_output=True, text=True,
                               timeout=60, cwd=os.path.dirname(sys.executable)).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        found = []
    roots = []
    for name, origin in ours.items():
        theirs = found[_PACKAGES.index(name)] if len(found) > len(_PACKAGES) - 1 else ""
        root = os.path.dirname(os.path.dirname(origin))
        if (not theirs or os.path.realpath(theirs) != os.path.realpath(origin)) and root not in roots:
            if ":" in root:  # PYTHONPATH's separator
                raise ConfigError(f"megagpt lies in {root}, whose ':' a job's PYTHONPATH cannot hold; install it "
                                  f"(pip install) or move it")
            roots.append(root)
    return f"export PYTHONPATH={shlex.quote(':'.join(roots))}${{PYTHONPATH:+:${{PYTHONPATH}}}}" if roots else ""


def submit_script(path: str, extra_args: tuple = ()) -> str:
    """sbatch the script at `path`; returns the job id. Its `#SBATCH` options are given on the command line too:
    sbatch lets SBATCH_* variables (SBATCH_TIMELIMIT, SBATCH_PARTITION...: a site's or a user's profile) override
    the script's lines, and the time limit, the save signal and the partition were checked together."""
    if not shutil.which("sbatch"):
        raise SlurmError("sbatch not found: is Slurm installed here? (slurm/local-cluster.sh start for a local one)")
    proc = subprocess.run(["sbatch", "--parsable", *directives(path), *extra_args, path], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch {path} failed: {' '.join(proc.stderr.split())}")
    return proc.stdout.strip().split(";")[0]


def directives(path: str) -> list[str]:
    """The options of a script's `#SBATCH` lines, which sbatch reads up to the first command."""
    options = []
    with open(path) as f:
        for line in f:
            if line.startswith("#SBATCH "):
                options.append(line[len("#SBATCH "):].strip())
            elif line.strip() and not line.startswith("#"):
                break
    return options


DEFAULT_MAX_ARRAY_SIZE = 1001  # slurm.conf's MaxArraySize unless a site sets it


def max_array_size() -> int:
    """Tasks one array job may have (slurm.conf's MaxArraySize: indices 0 .. MaxArraySize - 1)."""
    try:
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.MULTILINE)
    return int(found.group(1)) if proc.returncode == 0 and found and int(found.group(1)) > 0 else DEFAULT_MAX_ARRAY_SIZE


def cancel_jobs(jobs: list[str]) -> str | None:
    """scancel `jobs`; None once Slurm has taken the request, else why not."""
    try:
        proc = subprocess.run(["scancel", *jobs], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if proc.returncode == 0 else " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"


def jobs_in_flight(jobs: list[str]) -> list[str] | None:
    """Those of `jobs` Slurm still holds (pending, running, completing): a job it no longer knows has ended.
    None where squeue cannot tell (not installed, the controller unreachable)."""
    if not shutil.which("squeue"):
        return None
    try:
        proc = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(jobs)], capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:  # one id alone that Slurm has forgotten is an error; several are not
        return [] if "Invalid job id" in proc.stderr else None
    return proc.stdout.split()


def write_script(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def quote_all(args) -> str:
    return " ".join(shlex.quote(a) for a in args)
