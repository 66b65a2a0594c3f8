"""What a run prints and records per step: a batch job's log gets a line every train.log_interval steps."""

import json

from megagpt.train.metrics import RunLog


def test_without_a_progress_bar_a_line_every_log_interval_steps_and_the_last(tmp_path, capsys):
    log = RunLog(str(tmp_path), True, 5, tensorboard=False, progress=False, log_interval=2)
    for step in range(1, 6):
        log.step({"step": step, "loss": 8.0 - step / 10, "lr": 1e-3, "tokens_per_s": 1000.0})
    log.evaluation({"step": 5, "loss": 7.25, "ppl": 1408.1})
    log.close()
    assert capsys.readouterr().out.splitlines() == [
        "pretrain step 2/5: loss 7.8000, lr 1.00e-03, tok_s 1000",
        "pretrain step 4/5: loss 7.6000, lr 1.00e-03, tok_s 1000",
        "pretrain step 5/5: loss 7.5000, lr 1.00e-03, tok_s 1000",
        "step 5: held-out loss 7.2500, perplexity 1408.10"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]  # every step recorded, whatever is printed


def test_a_start_at_step_0_keeps_no_records_and_a_resume_those_through_its_step(tmp_path):
    """A run killed before its first checkpoint starts again at step 0 and evaluates before step 1 again: the
    killed run's step-0 held-out loss was kept, and eval.jsonl held it twice."""
    from megagpt.train.pretrain import keep_records_through

    def write(name, steps):
        (tmp_path / name).write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in steps))

    def steps(name):
        return [json.loads(line)["step"] for line in (tmp_path / name).read_text().splitlines()]

    write("metrics.jsonl", [1, 2, 3])
    write("eval.jsonl", [0, 2])
    keep_records_through(str(tmp_path), 0)
    assert steps("metrics.jsonl") == [] and steps("eval.jsonl") == []
    write("metrics.jsonl", [1, 2, 3])
    write("eval.jsonl", [0, 2])
    keep_records_through(str(tmp_path), 2)  # resumed from step 2: its evaluation at 2 is not run again
    assert steps("metrics.jsonl") == [1, 2] and steps("eval.jsonl") == [0, 2]


def test_a_record_that_cannot_be_written_is_kept_naming_the_file(tmp_path, monkeypatch):
    """A full disk made rank 0's flush raise an OSError naming no file, in a traceback, alone: the other ranks then
    failed at their next collective. The failure is kept (stop_if_unwritten makes every rank stop on it)."""
    import errno

    from megagpt.errors import StorageError

    log = RunLog(str(tmp_path), True, 5, tensorboard=False, progress=False)
    log.step({"step": 1, "loss": 8.0, "lr": 1e-3, "tokens_per_s": 1000.0})
    assert log.problem is None

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(log._metrics, "flush", full)
    log.step({"step": 2, "loss": 7.9, "lr": 1e-3, "tokens_per_s": 1000.0})
    assert isinstance(log.problem, StorageError)
    assert str(log.problem) == f"{tmp_path}/metrics.jsonl cannot be written (No space left on device)"
    log.evaluation({"step": 2, "loss": 7.25})  # nothing more is written once a record is lost
    monkeypatch.undo()
    log.close()
    assert (tmp_path / "eval.jsonl").read_text() == ""

    log = RunLog(str(tmp_path), True, 5, tensorboard=False, progress=False)
    monkeypatch.setattr(log._eval, "write", lambda text: (_ for _ in ()).throw(OSError(errno.EFBIG, "File too large")))
    log.evaluation({"step": 0, "loss": 8.5})
    assert str(log.problem) == f"{tmp_path}/eval.jsonl cannot be written (File too large)"


def test_a_tensorboard_write_that_fails_is_kept_naming_its_directory(tmp_path, monkeypatch):
    """TensorBoard's writer thread raises a failed write (a full disk) at a later add_scalar, on rank 0 alone."""
    import errno

    from megagpt.errors import StorageError

    log = RunLog(str(tmp_path), True, 5, tensorboard=True, progress=False)
    monkeypatch.setattr(log._tb, "add_scalar",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    log.step({"step": 1, "loss": 9.0, "lr": 1e-3, "tokens_per_s": 10.0})
    assert isinstance(log.problem, StorageError)
    assert str(log.problem) == f"{tmp_path}/tensorboard cannot be written (No space left on device)"
    monkeypatch.undo()
    log.close()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1  # the JSON record was written first
