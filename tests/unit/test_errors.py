"""megagpt.errors: one base class, and `megagpt` turns exactly that class into one line."""

from __future__ import annotations

import pytest

import launchers.cli as cli
from megagpt.errors import (CheckpointError, ConfigError, DataError, MegagptError, SlurmError, StorageError,
                            TrainingError)
from tests.conftest import REPO, TINY

SUBCLASSES = [ConfigError, CheckpointError, DataError, StorageError, SlurmError, TrainingError]


@pytest.mark.parametrize("cls", SUBCLASSES)
def test_every_error_is_a_megagpt_error(cls):
    assert issubclass(cls, MegagptError)


def test_old_import_paths_still_work():
    from megagpt.config import ConfigError as from_config
    from megagpt.train.checkpoint import CheckpointError as from_checkpoint

    assert from_config is ConfigError and from_checkpoint is CheckpointError


def pretrain_raising(monkeypatch, exc: Exception) -> None:
    """`megagpt pretrain` with `exc` raised from inside the command, where loading its config would be."""

    def load_config(*args, **kwargs):
        raise exc

    monkeypatch.setattr(cli, "load_config", load_config)
    cli.main(["pretrain", "--config", "run.yaml"])


@pytest.mark.parametrize("cls", SUBCLASSES)
def test_our_errors_are_one_line_and_exit_2(monkeypatch, capsys, cls):
    with pytest.raises(SystemExit) as stop:
        pretrain_raising(monkeypatch, cls("shards/web.jsonl:3: not a JSON object with a 'text' field"))
    assert stop.value.code == 2
    assert capsys.readouterr().err == "megagpt: error: shards/web.jsonl:3: not a JSON object with a 'text' field\n"


def test_unexpected_errors_keep_their_traceback(monkeypatch, capsys):
    with pytest.raises(FileNotFoundError, match="work/manifest/process"):
        pretrain_raising(monkeypatch, FileNotFoundError(2, "No such file or directory", "work/manifest/process"))
    assert "megagpt: error" not in capsys.readouterr().err


def test_a_reader_that_stops_reading_ends_the_command_quietly():
    """`megagpt corpus explain ... | head -1` ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    code = ("import launchers.cli as cli\n"
            "cli.main = lambda: [print('x' * 1000) for _ in range(10000)]\n"
            "cli.console()\n")
    proc = subprocess.run(f"{sys.executable} -c \"{code}\" | head -c 10; exit ${{PIPESTATUS[0]}}", shell=True,
                          executable="/bin/bash", capture_output=True, text=True, timeout=60, cwd=REPO)
    assert (proc.returncode, proc.stdout, proc.stderr) == (141, "x" * 10, "")


def test_a_real_command_names_the_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["tokenize", "--input", str(tmp_path / "a.jsonl"), "--output-prefix", str(tmp_path / "out"),
                  "--tokenizer", str(tmp_path / "tokenizer.json")])
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"megagpt: error: --input {tmp_path / 'a.jsonl'}: file not found\n"
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    with pytest.raises(SystemExit):
        cli.main(["tokenize", "--input", str(tmp_path / "a.jsonl"), "--output-prefix", str(tmp_path / "out"),
                  "--tokenizer", str(tmp_path / "tokenizer.json")])
    assert capsys.readouterr().err == f"megagpt: error: tokenizer file {tmp_path / 'tokenizer.json'} not found\n"


@pytest.fixture
def in_a_forked_rank(monkeypatch):
    """launchers.local.rank_main, run here: the exit handlers and signal dispositions it sets are pytest's."""
    import atexit
    import signal

    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: None)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_forked_rank_prints_a_bugs_traceback(monkeypatch, capsys, in_a_forked_rank):
    """A CPU rank prints a bug's traceback as `python -m launchers.cli` would: torch elastic's copy of it goes to a
    log the launcher silences, and CI once saw only 'rank 0 of 2 failed'."""
    from launchers.local import rank_main

    def failing(argv):
        raise TypeError("can't multiply sequence by non-int of type 'numpy.bool'")

    monkeypatch.setattr(cli, "main", failing)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(TypeError):
        rank_main(["pretrain"])
    lines = capsys.readouterr().err.splitlines()
    assert all(line.startswith("[rank1]: ") for line in lines)
    assert lines[0] == "[rank1]: Traceback (most recent call last):"
    assert lines[-1] == "[rank1]: TypeError: can't multiply sequence by non-int of type 'numpy.bool'"


def test_a_forked_rank_interrupted_prints_no_traceback(monkeypatch, capsys, in_a_forked_rank):
    """Ctrl-C reaches every rank of the terminal's process group: the launcher reports it, once."""
    from launchers.local import rank_main

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rank_main(["pretrain"])
    assert capsys.readouterr().err == ""


def test_a_forked_rank_leaves_our_errors_one_line(monkeypatch, capsys, in_a_forked_rank):
    from launchers.local import rank_main

    def load_config(*args, **kwargs):
        raise ConfigError("train.steps: must be > 0")

    monkeypatch.setattr(cli, "load_config", load_config)
    with pytest.raises(SystemExit) as stop:
        rank_main(["pretrain", "--config", "run.yaml"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "megagpt: error: train.steps: must be > 0\n"


@pytest.mark.parametrize("local_rank,printed", [("0", True), ("1", False)])
@pytest.mark.parametrize("bad", ["parallel.tp=3", "data.prefixes=[nowhere/web]", "optim.beta2=1.5"])
def test_a_check_every_rank_of_a_node_makes_alike_is_printed_once_per_node(monkeypatch, capsys, bad, local_rank,
                                                                           printed):
    """Under torchrun or srun every rank checks the same config and files before the world forms: one line per
    node, from its local rank 0, not one per rank."""
    monkeypatch.setenv("RANK", str(2 + int(local_rank)))  # node 1 of a 2 x 2 world
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # as torchrun sets them
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(SystemExit) as stop:
        cli.main(["pretrain", "--config", TINY, bad])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("megagpt: error: ") if printed else err == ""


def test_an_error_of_one_rank_alone_is_printed_by_that_rank(monkeypatch):
    from megagpt.errors import on_every_rank, prints_here

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert prints_here(DataError("shards/web.bin: short read"))  # found by rank 3 in training
    assert not prints_here(on_every_rank(DataError("shards/web.bin: short read")))


def test_a_gpu_rank_bound_per_task_prints_a_node_wide_error_by_its_rank_on_the_node(monkeypatch):
    """Under Slurm's per-task GPU binding LOCAL_RANK becomes each rank's GPU index, 0 everywhere: every rank
    printed the error it shares with its node."""
    from megagpt.errors import alike_on_each_node, prints_here

    import megagpt.parallel.distributed as distributed

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")  # device_for_local_rank's GPU index for DeepSpeed
    monkeypatch.setattr(distributed, "node_rank", 1)  # the rank on the node, kept by it
    with pytest.raises(DataError) as raised, alike_on_each_node():
        raise DataError("shards/web.bin: not found")
    assert not prints_here(raised.value)
    monkeypatch.setattr(distributed, "node_rank", 0)
    assert prints_here(raised.value)
    monkeypatch.setattr(distributed, "node_rank", None)  # a CPU rank: LOCAL_RANK is its rank on the node
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not prints_here(raised.value)


def test_eval_perplexity_refuses_a_data_file_it_cannot_read_before_opening_the_checkpoint(tmp_path, capsys):
    """A refused name (.json) was found only in the ranks, after each had loaded the checkpoint."""
    (tmp_path / "text.json").write_text('{"text": "hello"}\n')
    with pytest.raises(SystemExit) as stop:
        cli.main(["eval", "perplexity", "--checkpoint", str(tmp_path / "no-run"), "--data", str(tmp_path / "text.json")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"megagpt: error: {tmp_path / 'text.json'}: a text input is .txt") and err.count("\n") == 1


@pytest.mark.parametrize("output,message", [("{tmp}", "--output {tmp} is a directory; name the file to write"),
                                            ("{tmp}/no/x.json", "--output {tmp}/no/x.json: no directory {tmp}/no to write it in")])
def test_eval_output_that_cannot_be_written_is_refused_before_the_evaluation(tmp_path, capsys, output, message):
    """It was opened after every record was scored: a traceback, and the result lost."""
    (tmp_path / "text.txt").write_text("hello")
    with pytest.raises(SystemExit):
        cli.main(["eval", "perplexity", "--checkpoint", str(tmp_path / "no-run"), "--data", str(tmp_path / "text.txt"),
                  "--output", output.format(tmp=tmp_path)])
    assert capsys.readouterr().err == f"megagpt: error: {message.format(tmp=tmp_path)}\n"
