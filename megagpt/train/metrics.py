"""Rank 0's record of a run: metrics.jsonl (one object per optimizer step), eval.jsonl, TensorBoard, and on stdout a
progress bar, or (train.progress=false: a batch job's log) a line every train.log_interval steps."""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

from megagpt.errors import StorageError, on_every_rank
from megagpt.files import writing


PRETRAIN_POSTFIX = (("loss", "loss", ".4f"), ("lr", "lr", ".2e"), ("tok_s", "tokens_per_s", ".0f"))


class RunLog:
    def __init__(self, run_dir: str, enabled: bool, total_steps: int, tensorboard: bool, progress: bool,
                 first_step: int = 0, desc: str = "pretrain", postfix: tuple = PRETRAIN_POSTFIX, log_interval: int = 1):
        """postfix: (label, record key, format) of what the progress bar (or log line) shows per step."""
        self.enabled = enabled
        self.postfix = postfix
        self.desc, self.total_steps, self.log_interval = desc, total_steps, log_interval
        self._tb = None
        self._bar = None
        self._metrics = self._eval = None
        # a record that could not be written (a full disk), kept until the ranks agree to stop (stop_if_unwritten)
        self.problem: Optional[StorageError] = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._metrics = self._open(os.path.join(run_dir, "metrics.jsonl"))
        self._eval = self._open(os.path.join(run_dir, "eval.jsonl"))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=first_step, desc=desc, unit="step", dynamic_ncols=True)

    def step(self, record: dict) -> None:
        if not self.enabled:
            return
        self._append(self._metrics, record)
        self._scalars("train", record)
        shown = {label: format(record[key], fmt) for label, key, fmt in self.postfix}
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(shown)
        elif record["step"] % self.log_interval == 0 or record["step"] == self.total_steps:
            print(f"{self.desc} step {record['step']}/{self.total_steps}: "
                  + ", ".join(f"{label} {value}" for label, value in shown.items()), flush=True)

    def evaluation(self, record: dict) -> None:
        if not self.enabled:
            return
        self._append(self._eval, record)
        self._scalars("eval", record)
        ppl = f", perplexity {record['ppl']:.2f}" if "ppl" in record else ""
        (self._bar.write if self._bar is not None else lambda line: print(line, flush=True))(
            f"step {record['step']}: held-out loss {record['loss']:.4f}{ppl}")

    def _open(self, path: str):
        try:
            with writing(path):
                return open(path, "a")
        except StorageError as exc:
            self.problem = self.problem or exc
            return None

    def _append(self, f, record: dict) -> None:
        """One line of `f`, written now; a write that fails (a full disk: an OSError naming no file) is kept as
        self.problem, naming the file, rather than raised on rank 0 alone, and the file gets no more."""
        if f is None or self.problem is not None:
            return
        try:
            with writing(f.name):
                f.write(json.dumps(record) + "\n")
                f.flush()
        except StorageError as exc:
            self.problem = exc
            try:  # now, so that no interpreter's exit finalises it with an "Exception ignored" traceback
                f.close()
            except OSError:
                pass

    def _scalars(self, prefix: str, record: dict) -> None:
        if self._tb is None or self.problem is not None:
            return
        try:  # TensorBoard's writer thread raises its failed write (a full disk) at a later add_scalar
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])
        except OSError as exc:
            self.problem = StorageError(f"{self._tb.log_dir} cannot be written ({exc.strerror or exc})")

    def close(self) -> None:
        if not self.enabled:
            return
        for f in (self._metrics, self._eval):
            if f is not None:
                try:
                    f.close()
                except OSError:  # what a failed write left in its buffer: self.problem says why
                    if self.problem is None:
                        raise
        if self._tb is not None:
            try:
                self._tb.close()
            except OSError:
                if self.problem is None:
                    raise
        if self._bar is not None:
            self._bar.close()


def stop_if_unwritten(device, *problems: Optional[StorageError]) -> None:
    """Collective: a record rank 0 could not write (RunLog.problem, Checkpointer.problem) stops every rank alike,
    with rank 0's line naming the file; raised on rank 0 alone, it left the others to fail at their next collective,
    each with a traceback of a closed connection."""
    from megagpt.parallel.collectives import any_rank

    problem = first_unwritten(*problems)
    if any_rank(problem is not None, device):
        raise unwritten_error(problem)


def written_by_rank_zero(is_logger: bool, device, write: Callable[[], None]) -> None:
    """Collective: `write()` on rank 0 (the logger); a file it cannot write (StorageError) is agreed on, and raised
    by every rank, rather than raised on rank 0 alone (stop_if_unwritten)."""
    problem = None
    if is_logger:
        try:
            write()
        except StorageError as exc:
            problem = exc
    stop_if_unwritten(device, problem)


def first_unwritten(*problems: Optional[StorageError]) -> Optional[StorageError]:
    return next((p for p in problems if p is not None), None)


def unwritten_error(problem: Optional[StorageError]) -> StorageError:
    """The error every rank raises once the ranks agree a record went unwritten: rank 0's, naming the file."""
    return on_every_rank(problem or StorageError("rank 0 could not write a record of the run (its error says why)"))


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def first_evaluation(run_dir: str) -> Optional[dict]:
    """The run's first held-out evaluation in eval.jsonl (before its first step), if any."""
    try:
        with open(os.path.join(run_dir, "eval.jsonl")) as f:
            return json.loads(next(f))
    except (OSError, StopIteration, ValueError):
        return None
