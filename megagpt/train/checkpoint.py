"""Checkpoints that resume exactly, survive a crash mid-save, and load at any layout.

    <run.dir>/checkpoints/
        latest                      the tag of the newest complete checkpoint (written last, atomically)
        step_00000040/
            megagpt.json            step, consumed samples/tokens, layout, config, inputs read, sha256 of every file
            mp_rank_*, *optim_states.pt, layer_*   DeepSpeed's engine state of every rank
            rng/rank_00003.pt       this rank's RNG streams (ours, torch, Python, NumPy)
            universal/pp0_tp1.pt    layout-free form: full-DP fp32 weights and Adam moments of one TP shard

Resuming at the layout that saved goes through DeepSpeed's own `load_checkpoint` and
is bitwise exact. Loading at another (tp, pp, dp) reads `universal/` (megagpt.train.universal):
each parameter is keyed by its canonical name (the pp = 1 module's), and its TP shards are
concatenated along their partition dim and re-cut for the new layout. We keep this form ourselves
rather than DeepSpeed's universal checkpoint because that one needs an offline
conversion step and Megatron-specific name patterns for TP merging; ours is written in
the same save, and the Hugging Face export reads it too.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megagpt.config import Config, from_dict, stage_of, steps_bf16_optimizer
from megagpt.errors import CheckpointError, ConfigError, StorageError, on_every_rank
from megagpt.files import same_path, sha256_file, writing
from megagpt.parallel.parallelize import canonical_name
from megagpt.parallel.topology import ParallelContext
from megagpt.train.inputs import check_same_inputs, describe_inputs
from megagpt.train.universal import VOCAB_WEIGHT, load_universal, universal_shard, whole_shard

FORMAT_VERSION = 1
META = "megagpt.json"
LATEST = "latest"
TAG_RE = re.compile(r"^step_(\d{8})$")
# Model fields a checkpoint's weights depend on; any difference makes it unloadable.
SHAPE_KEYS = ("num_layers", "hidden_size", "num_heads", "ffn_size", "padded_vocab_size", "seq_length",
              "norm_position")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done; also the batch-ramp position
    consumed_samples: int = 0  # the data loader's position
    consumed_tokens: int = 0


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def model_shape(cfg: Config) -> dict:
    return {k: getattr(cfg.model, k) for k in SHAPE_KEYS}


# ---------------------------------------------------------------- files


def atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # a write's error (a full disk) names no file: this one
            raise OSError(exc.errno, exc.strerror, path) from None
        raise
    finally:  # a write that failed (a full disk) leaves no half-written temporary behind
        if os.path.exists(tmp):
            os.remove(tmp)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_failure(path: str, exc: BaseException) -> Optional[str]:
    """What went wrong writing `path`, in one line (an OSError's own words: "No space left on device"; torch's zip
    writer raises its own RuntimeError over the OSError of the file it was given); None if no OSError is behind it
    (not the file system: a bug, which keeps its traceback)."""
    cause, seen = exc, set()
    while cause is not None and not isinstance(cause, OSError) and id(cause) not in seen:
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, OSError):
        return None
    return f"{path}: {cause.strerror or cause}"


def save_file(save, path: str, failures: list[str]) -> None:
    """save(file) into `path` through a Python file, so a failed write raises the OSError that says why (torch.save
    given a path reports a full disk as "unexpected pos 14336 vs 14230"); a failure is added to `failures` rather
    than raised, so that this rank still reaches the save's collectives."""
    try:
        with open(path, "wb") as f:
            save(f)
    except (OSError, RuntimeError) as exc:
        problem = write_failure(path, exc)
        if problem is None:
            raise
        failures.append(problem)


@contextmanager
def recording_failures(engine, failures: list[str]):
    """DeepSpeed's checkpoint writes during the block go through save_file: a write that fails is recorded, and the
    engine goes on through its barriers with the other ranks instead of leaving them waiting for a rank that raised."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    writer = engine.checkpoint_engine
    original = writer.save

    def save(state_dict, path):
        if type(writer) is TorchCheckpointEngine:  # its save: torch.save with its serialization, given a file
            save_file(lambda f: torch.save(state_dict, f, _use_new_zipfile_serialization=writer.zipfile_serialization),
                      path, failures)
            return
        try:
            original(state_dict, path)
        except OSError as exc:
            failures.append(write_failure(path, exc))

    def copy_recovery_script(save_path):  # rank 0 copies DeepSpeed's zero_to_fp32.py outside the checkpoint engine
        try:
            original_copy(save_path)
        except OSError as exc:
            failures.append(write_failure(save_path, exc))

    original_copy = engine._copy_recovery_script
    writer.save, engine._copy_recovery_script = save, copy_recovery_script
    try:
        yield
    finally:
        del writer.save, engine._copy_recovery_script  # the classes' methods again


def make_save_dirs(path: str, subdirs: list[str], failures: list[str]) -> None:
    """Rank 0: a fresh `path` with `subdirs` (one left by a save that crashed before `latest` moved is replaced);
    a failure (a full disk, an inode quota) is recorded, for the ranks to agree on before they write there."""
    try:
        if os.path.isdir(path):
            shutil.rmtree(path)
        for sub in subdirs:
            os.makedirs(os.path.join(path, sub))
    except OSError as exc:
        failures.append(write_failure(exc.filename or path, exc))


def write_meta_and_latest(writes: list[tuple[str, str]], failures: list[str]) -> None:
    """Rank 0: each (file, text) atomically, in order, the last being `latest`; a failure is recorded (named by the
    file being written: a directory's fsync names none)."""
    for target, text in writes:
        try:
            atomic_write_text(target, text)
        except OSError as exc:
            failures.append(write_failure(target, exc))
            return


def first_problem(problem: Optional[str]) -> Optional[str]:
    """Collective: the first rank's problem (a rank named), None if no rank has one."""
    problems = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    return next((f"rank {rank}: {p}" for rank, p in enumerate(problems) if p), None)


def abandon_save(path: str, problem: str, root: str) -> CheckpointError:
    """Rank 0 removes what a failed save wrote (a full disk gets its space back; no META, so nothing would read it),
    and every rank gets the error, which names the checkpoint that stays in charge."""
    latest = read_latest(root)
    # `latest` moved but its directory's fsync failed: the checkpoint is whole and in charge, so it stays
    if dist.get_rank() == 0 and latest != os.path.basename(path):
        shutil.rmtree(path, ignore_errors=True)
    left = f"the last complete checkpoint is {os.path.join(root, latest)}" if latest else "there is no earlier checkpoint"
    return on_every_rank(CheckpointError(f"checkpoint {path} could not be saved ({problem}); the partial save was "
                                         f"removed, and {left}"))


def files_under(path: str) -> list[str]:
    found = []
    for root, _, files in os.walk(path):
        found += [os.path.relpath(os.path.join(root, f), path) for f in files if f != META]
    return sorted(found)


def checksums(path: str) -> dict[str, str]:
    """sha256 of every file under a checkpoint dir, each rank hashing its share (collective over the world)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    # one rank's listing for all: on NFS another node's cached view of the new directory may lack files yet
    listing = [files_under(path) if rank == 0 else None]
    dist.broadcast_object_list(listing, src=0)
    files = listing[0]
    mine = {name: sha256_file(os.path.join(path, name)) for name in files[rank::world]}
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    return {k: v for part in gathered for k, v in part.items()}


def read_meta(path: str) -> dict:
    meta_path = os.path.join(path, META)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: {META} not found (not a megagpt checkpoint, or an unfinished save)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: {META} is corrupt ({exc})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format_version {meta.get('format_version')!r}, "
                              f"this megagpt reads {FORMAT_VERSION}")
    return meta


def verify(path: str, rank: int = 0, world: int = 1, under: str = "") -> Optional[str]:
    """None if this rank's share of the files (those under `under`, such as "universal/": what a reader of the
    weights alone reads) match their checksums, else what is wrong."""
    try:
        meta = read_meta(path)
    except CheckpointError as exc:
        return str(exc)
    names = sorted(n for n in meta["files"] if n.startswith(under))
    for name in names[rank::world]:
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            return f"{full} is missing"
        if sha256_file(full) != meta["files"][name]:
            return f"{full} fails its sha256 checksum"
    return None


def verify_everywhere(path: str, under: str = "") -> Optional[str]:
    """verify() with the files shared among the ranks; every rank gets the first problem (collective)."""
    problems = [None] * dist.get_world_size()
    dist.all_gather_object(problems, verify(path, dist.get_rank(), dist.get_world_size(), under))
    return next((p for p in problems if p), None)


def require_verified(path: str, under: str = "universal/", what: str = "checkpoint") -> None:
    """Collective: a CheckpointError on every rank (printed once) unless the files of `path` under `under` (by
    default the weights' universal/ shards, all a weights reader reads) match their checksums. Whatever reads
    weights checks first: a truncated or altered shard must not become a silently wrong model."""
    problem = verify_everywhere(path, under)
    if problem:
        raise on_every_rank(CheckpointError(f"{what} {path}: {problem}"))


def read_latest(root: str) -> Optional[str]:
    try:
        with open(os.path.join(root, LATEST)) as f:
            return f.read().strip()
    except (FileNotFoundError, NotADirectoryError):  # (a run.dir under a file: the run says so when it writes there)
        return None


def complete_tags(root: str) -> list[str]:
    """Tags of the checkpoints under root whose save finished (they have their metadata), oldest first."""
    if not os.path.isdir(root):
        return []
    return sorted(t for t in os.listdir(root) if TAG_RE.match(t) and os.path.isfile(os.path.join(root, t, META)))


def candidates(root: str) -> list[str]:
    """Checkpoint dirs to try, best first: the one `latest` names, then older complete ones."""
    tags = complete_tags(root)[::-1]
    latest = read_latest(root)
    if latest in tags:  # newer dirs than `latest` are saves that never finished
        tags = tags[tags.index(latest):]
    return [os.path.join(root, t) for t in tags]


def prune(root: str, keep: int, saved: int) -> None:
    """After the save of step `saved`: keep the newest `keep` complete checkpoints up to it (0: all). Newer ones
    (a save that wrote its metadata but not `latest`, one a resume skipped as damaged) are left for the run's save
    of that step to replace: counted in, they pruned the checkpoint just saved, which `latest` names."""
    if keep <= 0:
        return
    upto = [t for t in complete_tags(root) if int(TAG_RE.match(t).group(1)) <= saved]
    for tag in upto[:-keep]:
        shutil.rmtree(os.path.join(root, tag), ignore_errors=True)


# what a run logs in run.dir, step by step (TensorBoard's events: a folder)
RECORDS = ("metrics.jsonl", "eval.jsonl", "samples.jsonl", "checkpoint_io.jsonl", "tensorboard")


def requeued() -> bool:
    """Whether this is a Slurm job requeued after preemption: it continues its run, whatever train.resume says
    (the first start honoured train.resume=false; every requeue must not start it over again)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def starts_afresh(cfg: Config) -> bool:
    return not cfg.train.resume and not requeued()


def set_aside_earlier_run(run_dir: str, device, who: str = "megagpt", why: str = "train.resume=false") -> None:
    """A fresh start where an earlier run saved: its checkpoints (and the records logged with them) move to
    <run.dir>/checkpoints/earlier[-N]/, under the checkpoint root itself so a root on another file system
    (a link to scratch) keeps them there. Left in place, keep_last would prune the new run's checkpoints for
    the earlier run's higher steps and a later resume would continue the earlier run; deleting them would
    lose what a user may still want. An earlier run that saved no checkpoint leaves records alone, which move
    too: the new run's would replace them. Collective."""
    from megagpt.parallel.collectives import any_rank

    root, failed = checkpoint_root(run_dir), None
    if dist.get_rank() == 0:
        earlier = sorted(t for t in os.listdir(root) if TAG_RE.match(t) or t == LATEST) if os.path.isdir(root) else []
        records = [name for name in RECORDS if os.path.exists(os.path.join(run_dir, name))]
        aside, n = os.path.join(root, "earlier"), 1
        while os.path.lexists(aside):
            n += 1
            aside = os.path.join(root, f"earlier-{n}")
        try:
            if earlier or records:
                os.makedirs(aside)
                for name in earlier:
                    os.rename(os.path.join(root, name), os.path.join(aside, name))
                for name in records:
                    shutil.move(os.path.join(run_dir, name), os.path.join(aside, name))
                steps = [str(int(TAG_RE.match(t).group(1))) for t in earlier if TAG_RE.match(t)]
                what = (f"checkpoints (steps {', '.join(steps) or 'none'}) and records" if earlier else
                        f"records ({', '.join(records)})")
                print(f"{who}: {why}: the earlier run's {what} moved to {aside}", file=sys.stderr, flush=True)
        except OSError as exc:
            failed = f"{exc.filename}: {exc.strerror}"
    if any_rank(failed is not None, device):
        raise on_every_rank(CheckpointError(  # rank 0's line, which says why, is the one printed
            f"{why}: the earlier run's checkpoints or records in {run_dir} could not be set aside "
            f"({failed or 'see rank 0'}); move them yourself or use another run.dir"))


def layout_of(cfg: Config, dp: int) -> dict:
    """What a checkpoint must match to load through DeepSpeed's own engine state (else its universal/ shards)."""
    p = cfg.parallel
    layout = {"tp": p.tp, "pp": p.pp, "dp": dp, "zero_stage": p.zero_stage, "precision": cfg.train.precision}
    # another optimizer class's state (bf16 ZeRO 1 saved before it accumulated in fp32, or offload turned on or
    # off) is read from universal/, not handed to DeepSpeed's loader for the class that did not save it
    if steps_bf16_optimizer(cfg.train.precision, p.zero_stage, p.pp, p.offload_optimizer):
        layout["optimizer"] = "BF16_Optimizer"
    return layout


def preflight(cfg: Config, world: int) -> None:
    """Before any process starts: the checkpoint a resume would pick must fit this model, this layout and inputs."""
    if starts_afresh(cfg):
        return
    for path in candidates(checkpoint_root(cfg.run.dir)):
        try:
            meta = read_meta(path)
            break
        except CheckpointError:
            continue  # resume() skips it too, and says why, for the next older one
    else:
        return  # none to resume (or none usable: resume() says so)
    check_compatible(meta, cfg, path)
    if not meta["weights_only"]:
        check_same_inputs(meta.get("inputs"), cfg, path, meta.get("cwd"))
    if "ppo" in meta:
        return  # layout-free (universal/ only)
    layout = layout_of(cfg, world // (cfg.parallel.tp * cfg.parallel.pp))
    if meta["layout"] != layout or meta["weights_only"]:  # Checkpointer.load reads universal/ then
        if not meta["universal"]:
            raise CheckpointError(f"checkpoint {path} was saved at layout {meta['layout']} without universal/ "
                                  f"shards (train.universal_checkpoint=false); it loads only at that layout, not "
                                  f"{layout}")
        if cfg.parallel.zero_stage == 3:
            raise CheckpointError(f"checkpoint {path} was written at another layout; loading it into "
                                  f"parallel.zero_stage=3 is not supported (use ZeRO 1 or 2 to reshape)")


def resolve_checkpoint(path: str) -> str:
    """A checkpoint dir, or a run.dir / checkpoints dir (then the one `latest` names)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: no such directory")
    for root in (path, checkpoint_root(path)):
        latest = os.path.join(root, LATEST)
        if os.path.isfile(latest):
            with open(latest) as f:
                return os.path.join(root, f.read().strip())
    return path


def resolve_init(key: str, path: str, run_dir: str) -> str:
    """A stage's init checkpoint (sft.init, rm.init, ...), resolved; refused where it lies among the checkpoints of
    the run.dir the stage writes to: a resume would take it for the stage's own, and train.resume=false would set
    it aside before it is read."""
    resolved = resolve_checkpoint(path)
    root, where = os.path.realpath(checkpoint_root(run_dir)), os.path.realpath(resolved)
    inside = where == root or where.startswith(root + os.sep)
    if inside and not os.path.relpath(where, root).startswith("earlier"):  # what was set aside stays put
        raise ConfigError(f"{key}={path} is a checkpoint of run.dir={run_dir}, which this stage writes to; "
                          f"give the stage a run.dir of its own")
    return resolved


def check_shape(meta: dict, cfg: Config, path: str, grown_vocab: bool = False) -> None:
    """The checkpoint's model has the config's shape; grown_vocab: but for a larger vocabulary (tokens added)."""
    theirs, ours = meta["model"], model_shape(cfg)
    grows = lambda k: grown_vocab and k == "padded_vocab_size" and (theirs.get(k) or 0) <= ours[k]  # noqa: E731
    diff = [f"model.{k}={ours[k]} (checkpoint has {theirs.get(k)})" for k in SHAPE_KEYS
            if theirs.get(k) != ours[k] and not grows(k)]
    if diff:
        raise CheckpointError(f"checkpoint {path} is for another model shape: config has {', '.join(diff)}")


def check_compatible(meta: dict, cfg: Config, path: str) -> None:
    check_shape(meta, cfg, path)
    if not meta["weights_only"]:  # an imported model (import-hf) starts a run; a trained one is continued
        check_same_run(meta["config"], cfg, path, meta.get("cwd"))


# What a resumed run may change: its length, logging, profiling and saving, and how it is laid out and run.
RESUMABLE_CHANGES = ("train.steps", "train.log_interval", "train.eval_interval", "train.eval_samples",
                     "train.progress", "train.save_interval", "train.keep_last", "train.resume",
                     "train.universal_checkpoint", "train.compile", "train.activation_checkpointing",
                     "train.exit_duration_minutes", "train.profile_steps", "train.profile_ranks", "data.cache_dir",
                     "run.", "parallel.", "rlhf.layout", "rlhf.log_samples")


# Settings that name files: the same where they name the same files, however written (an interactive run's relative
# path resumed by a Slurm script's absolute one); what the files hold is checked apart (check_same_inputs).
PATH_SETTINGS = ("data.prefixes", "data.mixture", "sft.data", "sft.init", "sft.tokenizer", "rm.data", "rm.init",
                 "rm.demonstrations", "rm.tokenizer", "finetune.train", "finetune.test", "finetune.init",
                 "finetune.tokenizer", "rlhf.prompts", "rlhf.actor_init", "rlhf.reward_init", "rlhf.tokenizer")


def check_same_run(saved: dict, cfg: Config, path: str, cwd: Optional[str] = None) -> None:
    """Resuming continues the saved run: any other change would silently train a different one. cwd: the directory
    the saved run ran in (None for a checkpoint from before it was recorded: paths must then be written alike)."""
    theirs, ours = _flat(from_dict(saved).to_dict()), _flat(cfg.to_dict())
    for key in PATH_SETTINGS:
        then, now = theirs.get(key), ours.get(key)
        if isinstance(then, str) and isinstance(now, str) and same_path(then, cwd, now):
            theirs[key] = now
        elif isinstance(then, list) and isinstance(now, list) and len(then) == len(now) and all(
                isinstance(a, str) and isinstance(b, str) and same_path(a, cwd, b) for a, b in zip(then, now)):
            theirs[key] = now
    # a pretraining loss is the mean over every token, however the batch is sliced; the other stages' is a mean per
    # micro-batch of their masked tokens, which another micro-batch size weighs differently
    resumable = RESUMABLE_CHANGES + (("train.micro_batch_size",) if stage_of(cfg) == "pretrain" else ())
    if stage_of(cfg) == "ppo":  # a schedule PPO never applied (a run saved before it was refused may now set 0)
        resumable += ("optim.warmup_tokens", "optim.decay_tokens", "optim.min_lr_ratio")
    changed = [f"{k}={ours.get(k)!r} (checkpoint has {theirs.get(k)!r})" for k in sorted(set(theirs) | set(ours))
               if theirs.get(k) != ours.get(k) and not k.startswith(resumable)]
    if changed:
        raise CheckpointError(f"run.dir={cfg.run.dir!r} was trained with another config ({'; '.join(changed[:4])}"
                              f"{'; ...' if len(changed) > 4 else ''}); resuming may change only its length, "
                              f"logging, profiling and saving, and how it is laid out and run: use a new run.dir, or "
                              f"train.resume=false")


def _flat(raw: dict) -> dict:
    return {f"{section}.{key}": value for section, values in raw.items() for key, value in values.items()}


# ---------------------------------------------------------------- saving


class Checkpointer:
    """Saves and restores one rank's share; every method is collective over the world."""

    def __init__(self, cfg: Config, pc: ParallelContext, engine, rng):
        self.cfg, self.pc, self.engine, self.rng = cfg, pc, engine, rng
        self.root = checkpoint_root(cfg.run.dir)
        self.rank = dist.get_rank()
        self.problem: Optional[StorageError] = None  # rank 0's checkpoint_io.jsonl record that could not be written
        self.inputs = describe_inputs(cfg) if self.rank == 0 else None  # as this start reads them

    def layout(self) -> dict:
        return layout_of(self.cfg, self.pc.dp)

    def save(self, state: TrainState) -> str:
        tag = tag_for(state.step)
        path = os.path.join(self.root, tag)
        start = time.perf_counter()
        failures: list[str] = []  # this rank's writes that failed (a full disk): every rank still makes the collectives
        if self.rank == 0:
            make_save_dirs(path, ["rng"] + (["universal"] if self.cfg.train.universal_checkpoint else []), failures)
        problem = first_problem(failures[0] if failures else None)  # the other ranks write into these directories
        if problem:
            raise abandon_save(path, problem, self.root)
        with recording_failures(self.engine, failures):
            self.engine.save_checkpoint(self.root, tag=tag, save_latest=False)
        rng = rng_state(self.rng.state_dict(), self.pc.device)
        save_file(lambda f: torch.save(rng, f), os.path.join(path, "rng", f"rank_{self.rank:05d}.pt"), failures)
        universal = self._universal_shard() if self.cfg.train.universal_checkpoint else None
        if universal is not None:
            save_file(lambda f: torch.save(universal, f),
                      os.path.join(path, "universal", f"pp{self.pc.pp_rank}_tp{self.pc.tp_rank}.pt"), failures)
        problem = first_problem(failures[0] if failures else None)
        if problem:
            raise abandon_save(path, problem, self.root)
        sums = checksums(path)
        if self.rank == 0:
            meta = {"format_version": FORMAT_VERSION, "step": state.step, "consumed_samples": state.consumed_samples,
                    "consumed_tokens": state.consumed_tokens, "layout": self.layout(), "model": model_shape(self.cfg),
                    "weights_only": False, "universal": self.cfg.train.universal_checkpoint,
                    "config": self.cfg.to_dict(), "cwd": os.getcwd(), "inputs": self.inputs,
                    "files": sums}
            write_meta_and_latest([(os.path.join(path, META), json.dumps(meta, indent=1, sort_keys=True)),
                                   (os.path.join(self.root, LATEST), tag + "\n")], failures)  # latest last
        problem = first_problem(failures[0] if failures else None)
        if problem:
            raise abandon_save(path, problem, self.root)
        self._record("save", path, state.step, time.perf_counter() - start)
        if self.rank == 0:
            self._prune(state.step)
        return path

    def _record(self, event: str, path: str, step: int, seconds: float) -> None:
        """<run.dir>/checkpoint_io.jsonl: what each save and load cost (benchmarks/checkpoint_io.py reads it)."""
        if self.rank != 0:
            return
        size = sum(os.path.getsize(os.path.join(root, f)) for root, _, fs in os.walk(path) for f in fs)
        record = os.path.join(self.cfg.run.dir, "checkpoint_io.jsonl")
        try:
            with writing(record), open(record, "a") as f:
                f.write(json.dumps({"event": event, "step": step, "path": path, "seconds": seconds, "bytes": size,
                                    "layout": self.layout()}) + "\n")
        except StorageError as exc:  # a full disk: kept for the ranks to agree on (metrics.stop_if_unwritten)
            self.problem = self.problem or exc

    def _prune(self, step: int) -> None:
        prune(self.root, self.cfg.train.keep_last, step)

    def _restore_rng(self, path: str) -> None:
        state = torch.load(os.path.join(path, "rng", f"rank_{self.rank:05d}.pt"), weights_only=False)
        streams = restore_rng(state, self.pc.device)
        if streams is not None:
            self.rng.load_state_dict(streams)
        elif self.rank == 0:
            print(other_device_note(path, state, self.pc.device), flush=True)

    def _local_params(self):
        layers = self.cfg.model.num_layers
        return [(canonical_name(n, layers), p) for n, p in self.engine.module.named_parameters()]

    def _universal_shard(self) -> Optional[dict]:
        return universal_shard(self.engine, self._local_params(), self.pc)

    # ------------------------------------------------------------ loading

    def resume(self) -> TrainState:
        """Load the newest usable checkpoint in run.dir (if train.resume); a fresh state otherwise."""
        if starts_afresh(self.cfg):
            set_aside_earlier_run(self.cfg.run.dir, self.pc.device)
            return TrainState()
        found, latest = candidates(self.root), read_latest(self.root)
        if latest is not None and latest not in map(os.path.basename, found) and self.rank == 0:
            print(f"megagpt: warning: {self.root}/latest names {latest}, which is missing or incomplete",
                  file=sys.stderr, flush=True)
        for path in found:
            start = time.perf_counter()  # its checksum pass reads every file: part of what the load costs, as in save
            problem = verify_everywhere(path)
            if problem is None:
                return self.load(path, start)
            if self.rank == 0:
                print(f"megagpt: warning: skipping checkpoint {path}: {problem}", file=sys.stderr, flush=True)
        if found or latest is not None:
            raise CheckpointError(f"no usable checkpoint in {self.root} (see the warnings above); "
                                  f"train.resume=false starts afresh")
        set_aside_earlier_run(self.cfg.run.dir, self.pc.device, why="no checkpoint to resume")
        return TrainState()


    def load(self, path: str, start: Optional[float] = None) -> TrainState:
        """`start`: when resume() began checking the files, for checkpoint_io.jsonl's seconds."""
        start = time.perf_counter() if start is None else start
        meta = read_meta(path)
        check_compatible(meta, self.cfg, path)
        if not meta["weights_only"] and meta["layout"] == self.layout() and not partitioned_without_zero(self.engine):
            loaded, _ = self.engine.load_checkpoint(os.path.dirname(path), tag=os.path.basename(path),
                                                    load_optimizer_states=True, load_lr_scheduler_states=False)
            if loaded is None:
                raise CheckpointError(f"checkpoint {path}: DeepSpeed could not load its engine state")
            self._restore_rng(path)
        elif not meta["universal"]:
            raise CheckpointError(f"checkpoint {path} was saved at layout {meta['layout']} without universal/ shards "
                                  f"(train.universal_checkpoint=false); it loads only at that layout, not {self.layout()}")
        else:
            self.load_universal(path, with_optimizer=not meta["weights_only"])
            ours = self.layout()
            if meta["layout"] and all(meta["layout"][k] == ours[k] for k in ("tp", "pp", "dp")):
                self._restore_rng(path)  # the same rank grid, with another ZeRO stage or precision: each its own
            elif self.rank == 0 and not meta["weights_only"] and (self.cfg.model.hidden_dropout or
                                                                  self.cfg.model.attention_dropout):
                print(f"megagpt: note: checkpoint {path} was saved at (tp, pp, dp) = ({meta['layout']['tp']}, "
                      f"{meta['layout']['pp']}, {meta['layout']['dp']}); dropout's masks at this layout are drawn "
                      f"from streams started afresh, so the run goes on within dropout's noise, not as it would have",
                      flush=True)
        dist.barrier()
        self._record("load" if meta["layout"] == self.layout() else "load-reshaped", path, meta["step"],
                     time.perf_counter() - start)
        return TrainState(meta["step"], meta["consumed_samples"], meta["consumed_tokens"])

    def load_weights(self, checkpoint: str, new_parameters: tuple = (), grown_vocab: bool = False) -> None:
        """Start this fresh run from another run's weights; its optimizer state and position are not taken.
        Parameters named with a `new_parameters` prefix (a head the checkpoint's model lacks) keep their init;
        grown_vocab: the vocabulary has rows the checkpoint lacks (tokens added), which keep theirs."""
        path = resolve_checkpoint(checkpoint)
        meta = read_meta(path)
        check_shape(meta, self.cfg, path, grown_vocab)
        if not meta["universal"]:
            raise CheckpointError(f"checkpoint {path} has no universal/ shards (train.universal_checkpoint=false)")
        require_verified(path)
        grow = {VOCAB_WEIGHT: (self.cfg.model.padded_vocab_size, self.cfg.model.init_std, self.cfg.train.seed)} \
            if grown_vocab else {}
        self.load_universal(path, with_optimizer=False, new_parameters=new_parameters, grow=grow)
        dist.barrier()

    def load_universal(self, path: str, with_optimizer: bool, new_parameters: tuple = (), grow: dict | None = None
                       ) -> None:
        """Set every local parameter (and its Adam moments) from the layout-free shards."""
        if self.cfg.parallel.zero_stage == 3:
            raise CheckpointError(f"checkpoint {path} was written at another layout; loading it into "
                                  f"parallel.zero_stage=3 is not supported (use ZeRO 1 or 2 to reshape)")
        load_universal(self.engine, self._local_params(), self.pc, path, with_optimizer, new_parameters, grow)


def partitioned_without_zero(engine) -> bool:
    """BF16_Optimizer at ZeRO 0 (bf16 at pp > 1): it partitions the fp32 master copy and Adam's moments over
    DP, but without ZeRO DeepSpeed saves dp rank 0's partition alone (and cannot load it back, KeyError in
    BF16_Optimizer._load_legacy_checkpoint), so this layout resumes from universal/ (whole, gathered over DP)."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    return isinstance(engine.optimizer, BF16_Optimizer) and not engine.zero_optimization()


def rng_state(streams, device: torch.device) -> dict:
    """This process's generators (Python, NumPy, torch CPU, and the rank's GPU where it trains on one) and
    `streams`, megagpt's own streams, which are generator states of `device`'s kind."""
    state = {"streams": streams, "device": device.type, "python": random.getstate(),
             "numpy": np.random.get_state(), "torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device):
    """Set this process's generators from rng_state(); returns the streams it held, or None where they were saved
    on another kind of device (a CUDA generator state is 16 bytes, a CPU one 5056: setting one from the other
    raised), and the run goes on with its fresh streams. Files from before the device was recorded: as saved."""
    torch.set_rng_state(state["torch_cpu"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("device", device.type) != device.type:
        return None
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    return state["streams"]


def other_device_note(path: str, state: dict, device: torch.device) -> str:
    return (f"megagpt: checkpoint {path} was saved on {state['device']}, this run is on {device.type}: dropout's "
            f"random streams start afresh (the weights and the data order are those saved)")


def write_universal(path: str, tensors: dict[str, torch.Tensor], cfg: Config) -> None:
    """A weights-only checkpoint (no optimizer state, step 0) from full tensors: what import-hf writes.

    One shard holding whole tensors, so no partition dims: loading cuts them for its own layout.
    """
    os.makedirs(os.path.join(path, "universal"), exist_ok=True)
    torch.save(whole_shard(tensors), os.path.join(path, "universal", "pp0_tp0.pt"))
    files = files_under(path)
    meta = {"format_version": FORMAT_VERSION, "step": 0, "consumed_samples": 0, "consumed_tokens": 0,
            "layout": None, "model": model_shape(cfg), "weights_only": True, "universal": True, "config": cfg.to_dict(),
            "files": {name: sha256_file(os.path.join(path, name)) for name in files}}
    atomic_write_text(os.path.join(path, META), json.dumps(meta, indent=1, sort_keys=True))
