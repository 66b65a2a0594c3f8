import shutil
import subprocess

import pytest


def slurm_up() -> str | None:
    """None if the local cluster answers, else why not."""
    if not shutil.which("sinfo"):
        return "Slurm is not installed (run slurm/local-cluster.sh start)"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return f"no Slurm controller answers: {proc.stderr.strip() or 'no nodes'}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = slurm_up()
    if reason:
        pytest.skip(reason)
