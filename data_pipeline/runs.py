"""What a corpus run is, recorded in its output.dir, and one run there at a time.

    <output.dir>/run.json   the config that shapes the results (not the executor's settings), the
                            folder document ids are relative to, and the inputs in shard order:
                            path, size, sha256 of the first and last MiB, id prefix
    <output.dir>/.lock      held (flock) by the run in progress; a second run refuses at once

A rerun into a recorded output.dir resumes only when config and inputs are what the record
says. Otherwise it refuses with one line naming what changed, unless `--restart` (start
clean) or, when inputs were only added, `--extend`: the new files become new shards, and
dedup, finalize, tokenizer, tokenize and summary are redone over all shards.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
from typing import Optional

from data_pipeline.config import CorpusConfig, input_files
from data_pipeline.io import write_json
from megagpt.dir_lock import hold
from megagpt.errors import ConfigError
from megagpt.files import edges_fingerprint, sha256_file

RECORD = "run.json"
MODES = ("resume", "restart", "extend")
# Every name a run writes in output.dir (the lock aside): all that --restart removes.
OUTPUTS = (RECORD, "stats.json", "tokenizer.json", "mixture.json", "work", "documents", "dropped", "tokens", "report")
CONTENTS = "contents"
SLURM_JOBS = os.path.join("work", "slurm", "jobs.json")  # the jobs a Slurm run submitted (executor.kind=slurm)
_TEMPORARY = re.compile(r"\.tmp\.(\d+)$")  # data_pipeline.io.atomic_path's names
# Stages whose output depends on every shard: redone when --extend adds shards.
ACROSS_SHARDS = ("dedup-exact", "dedup-bands", "dedup", "finalize", "tokenizer", "tokenize", "summary")


UNUSED_WITH_TOKENIZER = ("tokenize.vocab_size", "tokenize.train_sample_bytes", "tokenize.train_sample_seed")


def result_config(cfg: CorpusConfig) -> dict:
    """The settings the results depend on, flattened: section.key -> value; for a setting that names files (the
    quality model, benchmarks, a tokenizer) also `section.key contents`, their sha256s: a file rewritten in
    place changes the results as much as another path does."""
    raw = dataclasses.asdict(cfg)
    raw.pop("executor")  # local or Slurm, how many workers: the same bytes either way
    raw["input"].pop("paths")  # compared as the files they match
    raw["output"].pop("dir")
    flat = {f"{section}.{key}": value for section, values in raw.items() for key, value in values.items()}
    if cfg.tokenize.tokenizer:  # a given tokenizer is not trained: how it would be changes nothing
        for key in UNUSED_WITH_TOKENIZER:
            flat.pop(key)
    for key, paths in (("url.blocklists", cfg.url.blocklists), ("quality.model", [cfg.quality.model]),
                       ("decontam.paths", cfg.decontam.paths),
                       ("tokenize.tokenizer", [cfg.tokenize.tokenizer])):
        if any(paths):
            flat[f"{key} {CONTENTS}"] = [_contents(p) for p in paths]
    return json.loads(json.dumps(flat))  # as run.json holds it: mappings keyed by n-gram size have string keys


def _contents(path: str):
    """sha256 of a file, or of the files a tokenizer directory is read from (GPT-2's vocab.json + merges.txt, or its
    tokenizer.json; a model snapshot's weights beside them are not)."""
    from megagpt.data.tokenizer import tokenizer_files

    if os.path.isdir(path):
        return {os.path.basename(f): sha256_file(f) for f in tokenizer_files(path)}
    return sha256_file(path)


class Run:
    """An open corpus run: holds the lock until closed; `inputs` are the recorded files in shard order."""

    def __init__(self, cfg: CorpusConfig, mode: str = "resume"):
        if mode not in MODES:
            raise ConfigError(f"corpus run mode {mode!r} must be one of {', '.join(MODES)}")
        self.out = cfg.output.dir
        self._lock = hold(self.out, "output.dir", "corpus run")
        try:
            self.inputs = self._open(cfg, mode)
        except BaseException:
            self.close()
            raise

    def _open(self, cfg: CorpusConfig, mode: str) -> list[dict]:
        _refuse_jobs_in_flight(self.out)
        record = read_record(self.out)
        if record is None and _holds_a_run(self.out) and mode != "restart":
            raise ConfigError(f"output.dir={self.out!r} holds an earlier corpus run without {RECORD} "
                              f"(made by an older megagpt): --restart to start it clean")
        if mode == "restart" or record is None:
            if mode == "restart":
                _clear(self.out)
            return self._write(cfg, _describe(input_files(cfg)))
        files = input_files(cfg)
        theirs, ours = record["config"], result_config(cfg)
        if cfg.tokenize.tokenizer:  # recorded by a megagpt that kept them
            theirs = {k: v for k, v in theirs.items() if k not in UNUSED_WITH_TOKENIZER}
        if not any(k.endswith(CONTENTS) for k in theirs):  # recorded before file contents were: settings alone
            ours = {k: v for k, v in ours.items() if not k.endswith(CONTENTS)}
        # a setting a later megagpt added is absent from the record: at its default it changes nothing
        defaults = result_config(CorpusConfig())
        changed = [_change(k, theirs.get(k), ours.get(k)) for k in sorted(set(theirs) | set(ours))
                   if theirs.get(k) != ours.get(k) and not (k not in theirs and k in defaults and
                                                           ours.get(k) == defaults[k])]
        recorded = {entry["path"]: entry for entry in record["inputs"]}
        current = {os.path.abspath(f) for f in files}
        removed = [p for p in recorded if p not in current]
        altered = [p for p in recorded if p in current and edges_fingerprint(p) != _fields(recorded[p])]
        added = [f for f in files if os.path.abspath(f) not in recorded]
        problems = changed + [f"input removed: {p}" for p in removed] + [f"input changed: {p}" for p in altered]
        if problems:
            raise ConfigError(f"output.dir={self.out!r} holds a run with other settings or inputs ("
                              f"{'; '.join(problems[:4])}{'; ...' if len(problems) > 4 else ''}): "
                              f"--restart to redo it, or use another output.dir")
        if added and mode != "extend":
            raise ConfigError(f"output.dir={self.out!r}: {len(added)} input(s) not in its run (first: {added[0]}): "
                              f"--extend to add them (dedup, tokenizer and tokens are redone), --restart to redo all")
        _remove_stale_temporaries(self.out)
        if not os.path.isfile(os.path.join(self.out, "tokenizer.json")):
            from data_pipeline.executors import clear_done

            # run by a megagpt that tokenized with a given tokenizer where it lay, or the file was removed: the stages
            # from the tokenizer on are redone (the tokens must be the tokenizer's that sits beside them)
            for stage in ("tokenizer", "tokenize", "summary"):
                clear_done(self.out, stage)
        if added:
            from data_pipeline.executors import clear_done

            for stage in ACROSS_SHARDS:
                clear_done(self.out, stage)
            return self._write(cfg, record["inputs"] + _describe(added), record["base"])
        return record["inputs"]

    def _write(self, cfg: CorpusConfig, inputs: list[dict], base: Optional[str] = None) -> list[dict]:
        base = base or _common_base([e["path"] for e in inputs])
        inputs = [{**e, "id_prefix": e.get("id_prefix") or os.path.relpath(e["path"], base)} for e in inputs]
        write_json(os.path.join(self.out, RECORD), {"config": result_config(cfg), "base": base, "inputs": inputs})
        return inputs

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _refuse_jobs_in_flight(out_dir: str) -> None:
    """The lock guards a run while its process lives; a Slurm run that does not wait (executor.wait=false) leaves
    its jobs working in output.dir after it: another run (a --restart removing what they read) must wait."""
    from megagpt.slurm import jobs_in_flight

    try:
        with open(os.path.join(out_dir, SLURM_JOBS)) as f:
            jobs = json.load(f)["jobs"]
    except (OSError, ValueError, KeyError):
        return
    left = jobs_in_flight(jobs)
    if left:
        raise ConfigError(f"output.dir={out_dir!r}: the Slurm jobs of its run ({', '.join(jobs)}) are still queued "
                          f"or running: wait for them (squeue -j {','.join(jobs)}) or scancel them")


def _change(key: str, theirs, ours) -> str:
    if key.endswith(CONTENTS):
        return f"{key[:-len(CONTENTS) - 1]}: a file's contents changed"
    return f"{key}: {theirs!r} -> {ours!r}"


def read_record(out_dir: str) -> Optional[dict]:
    path = os.path.join(out_dir, RECORD)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as exc:
        raise ConfigError(f"{path} is corrupt ({exc}): --restart to redo the run") from None


def recorded_inputs(out_dir: str) -> tuple[dict, ...]:
    """The run's inputs in shard order (what Slurm tasks and every stage read)."""
    try:
        stat = os.stat(os.path.join(out_dir, RECORD))
    except FileNotFoundError:
        raise ConfigError(f"output.dir={out_dir!r} has no {RECORD}: start the run with `megagpt corpus run`") from None
    return _inputs(out_dir, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _inputs(out_dir: str, mtime_ns: int, size: int) -> tuple[dict, ...]:
    # Read once per version of the record, not once per shard: a CommonCrawl run's record lists 50k inputs
    # (~20 MB), and a worker parsed it for every shard it processed.
    return tuple(read_record(out_dir)["inputs"])


def _describe(files: list[str]) -> list[dict]:
    return [{"path": os.path.abspath(f), **edges_fingerprint(f)} for f in files]


def _fields(entry: dict) -> dict:
    return {"size": entry["size"], "edges_sha256": entry["edges_sha256"]}


def _common_base(paths: list[str]) -> str:
    return os.path.commonpath([os.path.dirname(p) for p in paths])


def _holds_a_run(out_dir: str) -> bool:
    return os.path.isdir(os.path.join(out_dir, "work", "manifest"))


def _clear(out_dir: str) -> None:
    """What a run writes under out_dir (OUTPUTS), leaving the lock (held by us) and anything else there, such as
    input files kept beside the run, in place."""
    for name in os.listdir(out_dir):
        if name not in OUTPUTS and _TEMPORARY.sub("", name) not in OUTPUTS:  # half-written ones go too
            continue
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def _remove_stale_temporaries(out_dir: str) -> None:
    """Half-written files (`name.tmp.<pid>`) of a run that was killed: their writer is gone, nothing reads them."""
    for root, _, files in os.walk(out_dir):
        for name in files:
            match = _TEMPORARY.search(name)
            if match and not _alive(int(match.group(1))):
                os.remove(os.path.join(root, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
