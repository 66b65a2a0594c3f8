"""Every benchmark starts: its imports resolve against the code as it is now.

Benchmarks run by hand, so a renamed function they import fails nobody's test; `--help` parses
the arguments after the module-level imports and exits.
"""

import glob
import os
import subprocess
import sys

import pytest

from tests.conftest import CPU_ENV, REPO

# Run by corpus_throughput.py, filters_vs_datatrove.py and ppo_throughput.py in the peers' own virtualenvs (datatrove, trl).
PEERS = {"datatrove_filters.py", "datatrove_fineweb.py", "trl_ppo.py"}
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "benchmarks", "*.py")))


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s not in PEERS])
def test_benchmark_starts(script):
    proc = subprocess.run([sys.executable, os.path.join("benchmarks", script), "--help"], cwd=REPO,
                          env={**os.environ, **CPU_ENV}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
