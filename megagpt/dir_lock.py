"""One run per directory: an flock on <dir>/.lock, held while the run lives, naming its holder.

A corpus run holds its output.dir, a training run (pretrain, SFT, reward model, PPO) its run.dir: a
second run into the same directory refuses at once instead of interleaving its records and checkpoints
with the first's. The lock goes with the holder's process (or file descriptor), so a killed run never
leaves a stale one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import sys
from typing import IO, Optional

from megagpt.errors import ConfigError, MegagptError, on_every_rank

LOCK = ".lock"


def hold(directory: str, key: str, what: str) -> IO:
    """Lock `directory` (the config key `key` named it) for a `what`; a ConfigError if another process holds it."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigError(f"{key}={directory!r} is a file, not a directory")
    try:
        os.makedirs(directory, exist_ok=True)
        handle = open(os.path.join(directory, LOCK), "a+")
    except OSError as exc:
        raise ConfigError(f"{key}={directory!r} cannot be written ({exc.strerror})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"{key}={directory!r} is in use by another {what} ({holder}); wait for it or use "
                          f"another {key} (if that process is gone, as with a failed node, delete "
                          f"{os.path.join(directory, LOCK)})") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        # a file system without flock (Lustre mounted without -o flock, NFSv3 without lockd): run unguarded
        print(f"megagpt: warning: {directory} cannot be locked ({exc.strerror}); nothing stops a second run "
              f"from using it at the same time", file=sys.stderr, flush=True)
        return handle
    local = node_local_locks(os.path.realpath(directory))
    if local:
        print(f"megagpt: warning: {directory} is locked on this node only ({local}); nothing stops a {what} "
              f"on another node from using it at the same time", file=sys.stderr, flush=True)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
    except OSError as exc:
        handle.close()
        raise ConfigError(f"{key}={directory!r} cannot be written ({exc.strerror})") from None
    return handle


def node_local_locks(directory: str, mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """Why an flock in `directory` (a resolved path) binds only this node's processes, or None: Lustre mounted
    with -o localflock and NFS with local_lock=flock|all or nolock grant it locally, so two nodes both hold it."""
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:  # not Linux: nothing to tell
        return None
    best = None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        fields, rest = fields.split(), rest.split()
        if len(fields) < 6 or len(rest) < 2:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])  # a space is \040
        inside = directory == point or directory.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):  # the last of stacked mounts is the visible one
            best = (point, rest[0], set(fields[5].split(",")) | set(rest[2].split(",") if len(rest) > 2 else ()))
    if best is None:
        return None
    point, kind, options = best
    if kind == "lustre" and "localflock" in options:
        return f"{point} is Lustre mounted with localflock; mount it with flock"
    local = {"local_lock=flock", "local_lock=all", "nolock"} & options
    if kind.startswith("nfs") and local:
        return f"{point} is NFS mounted with {sorted(local)[0]}"
    return None


def hold_on_rank_zero(directory: str, key: str, what: str, device) -> Optional[IO]:
    """Collective: rank 0 locks `directory` (returned; None on other ranks), and every rank raises if it could not,
    so no rank goes on to write there."""
    import torch.distributed as dist

    from megagpt.parallel.collectives import any_rank

    handle, failed = None, None
    if dist.get_rank() == 0:
        try:
            handle = hold(directory, key, what)
        except Exception as exc:  # whatever it is, the other ranks must hear of it rather than wait
            failed = exc
    if any_rank(failed is not None, device):
        if isinstance(failed, MegagptError):
            raise on_every_rank(failed)  # rank 0's line, which names the holder, is the one printed
        if failed is not None:
            raise failed
        raise on_every_rank(ConfigError(f"{key}={directory!r} could not be locked by rank 0 (its error says why)"))
    return handle
