"""Which package may import which: the corpus pipeline stands on megagpt alone, never on launchers
(the CLI), so it can be used and tested without the command line's dependencies."""

from __future__ import annotations

import ast
import glob
import os

from tests.conftest import REPO


def imported_modules(path: str) -> set[str]:
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def test_data_pipeline_does_not_import_launchers():
    files = glob.glob(os.path.join(REPO, "data_pipeline", "**", "*.py"), recursive=True)
    assert files
    offending = {os.path.relpath(path, REPO): sorted(mods) for path in files
                 if (mods := {m for m in imported_modules(path) if m.split(".")[0] == "launchers"})}
    assert not offending
