"""One run per directory: the lock names its holder, and a training world refuses together."""

import errno
import fcntl

import pytest
import torch

from megagpt.dir_lock import LOCK, hold, hold_on_rank_zero
from megagpt.errors import ConfigError


def test_a_held_directory_refuses_a_second_holder_naming_the_first(tmp_path):
    first = hold(str(tmp_path / "run"), "run.dir", "training run")
    with pytest.raises(ConfigError, match=r"run.dir='.*run' is in use by another training run \(pid \d+ on .+\); "
                                          r"wait for it or use another run.dir \(if that process is gone"):
        hold(str(tmp_path / "run"), "run.dir", "training run")
    first.close()  # the lock goes with its holder
    hold(str(tmp_path / "run"), "run.dir", "training run").close()


def test_every_rank_raises_when_rank_zero_cannot_hold(tmp_path, world_of_one):
    first = hold(str(tmp_path), "run.dir", "training run")
    with pytest.raises(ConfigError, match="in use by another training run") as raised:
        hold_on_rank_zero(str(tmp_path), "run.dir", "training run", torch.device("cpu"))
    assert raised.value.same_on_every_rank  # printed once, by rank 0
    first.close()
    hold_on_rank_zero(str(tmp_path), "run.dir", "training run", torch.device("cpu")).close()


def test_a_file_system_without_flock_runs_unguarded_with_a_warning(tmp_path, monkeypatch, capsys):
    def no_locks(handle, flags):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    hold(str(tmp_path), "output.dir", "corpus run").close()
    assert f"megagpt: warning: {tmp_path} cannot be locked (No locks available)" in capsys.readouterr().err
    assert (tmp_path / LOCK).exists()


def test_a_file_not_a_directory_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"output.dir='.*f' is a file, not a directory"):
        hold(str(tmp_path / "f"), "output.dir", "corpus run")


MOUNTS = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 259:1 / / rw,relatime - ext4 /dev/root rw
40 27 0:50 / /scratch rw,relatime - lustre 10.0.0.1@o2ib:/scratch rw,localflock,lazystatfs
41 27 0:51 / /project rw,relatime - lustre 10.0.0.1@o2ib:/project rw,flock,lazystatfs
42 27 0:52 / /home rw,relatime - nfs4 nas:/home rw,vers=4.2,local_lock=none,addr=10.0.0.2
43 42 0:53 / /home/shared\\040data rw,relatime - nfs nas:/data rw,vers=3,nolock,local_lock=all,addr=10.0.0.2
44 27 0:54 / /scratch/tmp rw,relatime - tmpfs tmpfs rw
"""


@pytest.mark.parametrize("directory,why", [
    ("/scratch/runs/a", "/scratch is Lustre mounted with localflock; mount it with flock"),
    ("/scratch", "/scratch is Lustre mounted with localflock; mount it with flock"),
    ("/scratchy/runs", None),  # a longer name, not a directory below /scratch
    ("/scratch/tmp/runs", None),  # the innermost mount decides
    ("/project/runs", None),
    ("/home/me/runs", None),
    ("/home/shared data/runs", "/home/shared data is NFS mounted with local_lock=all"),
    ("/var/runs", None),
])
def test_locks_that_hold_on_one_node_only_are_named(tmp_path, directory, why):
    """Lustre's localflock and NFS's local locks grant an flock per node: two runs on two nodes of a cluster both
    held the directory, so the lock's holder is told rather than trusting it."""
    from megagpt.dir_lock import node_local_locks

    (tmp_path / "mountinfo").write_text(MOUNTS)
    assert node_local_locks(directory, str(tmp_path / "mountinfo")) == why


def test_a_node_local_lock_is_held_with_a_warning(tmp_path, monkeypatch, capsys):
    from megagpt import dir_lock

    monkeypatch.setattr(dir_lock, "node_local_locks", lambda d: "/scratch is Lustre mounted with localflock")
    hold(str(tmp_path), "run.dir", "training run").close()
    assert (f"megagpt: warning: {tmp_path} is locked on this node only (/scratch is Lustre mounted with "
            f"localflock); nothing stops a training run on another node") in capsys.readouterr().err
