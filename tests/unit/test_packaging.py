"""A wheel of this repository is a working megagpt on its own: it holds every package, the configs and
the sbatch templates, and an install of it finds them inside itself, from any directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.conftest import REPO

# Runs in the installed copy, from tmp_path: loads the demo config, renders the pretrain script
# (dry run) and prints `megagpt demo --help`, recording every file it opens in the repository
# (other than the virtualenv's, which may live there).
SNIPPET = r"""
import contextlib, io, json, os, sys
opened = []
def in_repo(path):
    path = os.path.abspath(path)
    return path.startswith(REPO + os.sep) and not path.startswith(sys.prefix + os.sep)
sys.addaudithook(lambda event, args: event == "open" and isinstance(args[0], str) and in_repo(args[0])
                 and opened.append(args[0]))
import launchers.cli as cli
from launchers.demo import DEMO_CONFIG
from launchers.submit import PretrainJob, render_pretrain
from megagpt.config import load_config
from megagpt.slurm import template_path
cfg = load_config(DEMO_CONFIG)
for ext in (".bin", ".idx"):
    open("shard" + ext, "w").close()
script, _ = render_pretrain(PretrainJob(config=DEMO_CONFIG, overrides=["data.prefixes=[shard]"], nodes=1,
                                        gpus_per_node=8))
help_text = io.StringIO()
with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
    cli.main(["demo", "--help"])
modules = [m.__file__ for name, m in list(sys.modules.items())
           if name.split(".")[0] in ("megagpt", "launchers", "data_pipeline") and getattr(m, "__file__", None)]
print(json.dumps({"demo_config": DEMO_CONFIG, "template": template_path("pretrain.sbatch"),
                  "layers": cfg.model.num_layers, "script": script, "help": help_text.getvalue(),
                  "modules": modules, "opened": opened}))
"""


def package_dirs() -> list[str]:
    """Every directory of Python packages in the repository that the wheel must ship."""
    return sorted(os.path.relpath(d, REPO) for top in ("megagpt", "launchers", "data_pipeline")
                  for d, _, files in os.walk(os.path.join(REPO, top)) if "__init__.py" in files)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, site dir): built from a copy of the sources, so no build/ or .egg-info lands in the repository."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        setup = tomllib.load(f)["tool"]["setuptools"]
    tops = {setup["package-dir"].get(p, p.replace(".", "/")).split("/")[0] for p in setup["packages"]}
    for top in tops:
        shutil.copytree(os.path.join(REPO, top), src / top, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-index", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
                    str(src)], check=True, capture_output=True)
    wheel, = (tmp / "dist").glob("megagpt-*.whl")
    subprocess.run([*pip, "install", "--no-index", "--no-deps", "--target", str(tmp / "site"), str(wheel)],
                   check=True, capture_output=True)
    return wheel, str(tmp / "site")


def test_wheel_ships_every_package_config_and_template(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [d for d in package_dirs() if f"{d}/__init__.py" not in names]
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    for folder, package, suffix in (("configs", "megagpt/configs", ".yaml"), ("configs", "megagpt/configs", ".jsonl"),
                                    ("slurm", "megagpt/slurm_templates", ".sbatch")):
        shipped = [f"{package}/{os.path.relpath(os.path.join(d, f), os.path.join(REPO, folder))}"
                   for d, _, files in os.walk(os.path.join(REPO, folder)) for f in files if f.endswith(suffix)]
        assert shipped and set(shipped) <= names, sorted(set(shipped) - names)
    assert "megagpt/configs/demo/tiny.yaml" in names and "megagpt/slurm_templates/pretrain.sbatch" in names


def test_install_finds_its_resources_inside_itself(installed, tmp_path):
    _, site = installed
    env = {**os.environ, "PYTHONPATH": site}
    proc = subprocess.run([sys.executable, "-c", f"REPO = {REPO!r}\n{SNIPPET}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.splitlines()[-1])
    assert found["demo_config"] == os.path.join(site, "megagpt", "configs", "demo", "tiny.yaml")
    assert found["template"] == os.path.join(site, "megagpt", "slurm_templates", "pretrain.sbatch")
    assert found["modules"] and all(path.startswith(site + os.sep) for path in found["modules"])
    assert found["opened"] == []
    assert found["layers"] == 4 and "usage: megagpt demo" in found["help"]
    assert f"--config {found['demo_config']}" in found["script"] and "#SBATCH --ntasks-per-node=8" in found["script"]
    cli = subprocess.run([sys.executable, "-m", "launchers.cli", "demo", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and cli.stdout.startswith("usage: megagpt demo"), cli.stderr


def test_the_installed_command_exits_with_the_commands_code(installed, tmp_path):
    """bin/megagpt ends through exit_now (no torch teardown): its output and exit codes are the command's."""
    _, site = installed
    env = {**os.environ, "PYTHONPATH": site}
    command = os.path.join(site, "bin", "megagpt")
    ok = subprocess.run([command, "demo", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("usage: megagpt demo"), ok.stderr
    bad = subprocess.run([command, "pretrain", "--config", "no.yaml"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    last = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 2 and last.startswith("megagpt: error: ") and "no.yaml" in last
    usage = subprocess.run([command, "pretrain", "--nproc"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 2 and "usage:" in usage.stderr
