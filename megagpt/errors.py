"""The errors megagpt raises on purpose: each says in one line what to fix.

The `megagpt` command prints exactly these as `megagpt: error: <message>` and exits 2;
anything else is a bug and keeps its traceback.
"""


import os
import sys
from contextlib import contextmanager


class MegagptError(Exception):
    """Base of the errors below; the message is one line naming the file, key or value at fault."""

    # Raised by every rank at the same point with the same message: `megagpt` prints it on rank 0 alone.
    same_on_every_rank = False
    # Raised by every rank of a node alike (a check of the config and the files, before the world forms):
    # printed by each node's local rank 0, so a file that one node sees differently is still reported.
    same_on_every_node = False


def on_every_rank(error: MegagptError) -> MegagptError:
    """`error`, raised alike by every rank (a collective found it, or each rank computes the same): printed once."""
    error.same_on_every_rank = True
    return error


@contextmanager
def alike_on_each_node():
    """Checks every rank of a node makes alike from the config and the files it reads (not its device)."""
    try:
        yield
    except MegagptError as exc:
        exc.same_on_every_node = True
        raise


def prints_here(error: MegagptError) -> bool:
    """Whether this process prints `error`: all do, but one per world or node for an error raised alike."""
    if error.same_on_every_rank:
        return os.environ.get("RANK", "0") == "0"
    if error.same_on_every_node:  # the rank on the node: kept by a GPU rank, whose LOCAL_RANK becomes its GPU index;
        started = sys.modules.get("megagpt.parallel.distributed")  # else LOCAL_RANK, or srun's before it is mapped
        kept = getattr(started, "node_rank", None)
        node_rank = str(kept) if kept is not None else os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID")
        return (node_rank or "0") == "0"
    return True


class ConfigError(MegagptError):
    """A value the user gave (config key, override, option) is invalid or names nothing; names key and value."""


class CheckpointError(MegagptError):
    """A checkpoint that cannot be used (missing, corrupt, another shape or layout); names the directory or file."""


class DataError(MegagptError):
    """An input file missing, incomplete or malformed (corpus run, shard, tokenizer, JSONL line); names the file."""


class StorageError(MegagptError):
    """A file megagpt writes could not be written (a full disk, a quota, a read-only file system); names the file."""


class SlurmError(MegagptError):
    """Slurm lacks or refused something (sbatch, job, a stage, srun's variables); names the script, job or variable."""


class TrainingError(MegagptError):
    """The run itself went wrong: a non-finite loss or gradient norm; names the step and the last checkpoint."""

    same_on_every_rank = True  # the loss and the norm it judges are reduced over the world (megagpt.train.guard)
