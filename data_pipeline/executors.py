"""Running a stage's tasks: a process per worker on this machine, skipping tasks already done.

A task is done when its marker exists in <output>/work/manifest/<stage>/; markers are
written after the task's outputs are renamed into place, so a run killed at any point
redoes only unfinished tasks.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Callable, Sequence

from megagpt import usable_cpus
from megagpt.files import writing


def _marker(out_dir: str, stage: str, task_id: str) -> str:
    return os.path.join(out_dir, "work", "manifest", stage, f"{task_id}.done")


def is_done(out_dir: str, stage: str, task_id: str) -> bool:
    return os.path.exists(_marker(out_dir, stage, task_id))


def mark_done(out_dir: str, stage: str, task_id: str) -> None:
    path = _marker(out_dir, stage, task_id)
    with writing(path, os.path.dirname(path)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w"):
            pass


def unmark_done(out_dir: str, stage: str, task_id: str) -> None:
    if os.path.exists(_marker(out_dir, stage, task_id)):
        os.remove(_marker(out_dir, stage, task_id))


def clear_done(out_dir: str, stage: str) -> None:
    """Forget every finished task of a stage, so the next run redoes it."""
    import shutil

    shutil.rmtree(os.path.join(out_dir, "work", "manifest", stage), ignore_errors=True)


def _run_task(job):
    fn, out_dir, stage, task_id, args = job
    fn(*args)
    mark_done(out_dir, stage, task_id)
    return task_id


class LocalExecutor:
    def __init__(self, workers: int | None, progress: bool = True):
        self.workers = workers or usable_cpus()
        self.progress = progress

    def run(self, out_dir: str, stage: str, fn: Callable, tasks: Sequence[tuple[str, tuple]],
            at_once: int | None = None) -> int:
        """Run fn(*args) for each (task_id, args) not yet done, at most `at_once` at a time (default: a task per
        worker); returns how many ran."""
        todo = [(fn, out_dir, stage, tid, args) for tid, args in tasks if not is_done(out_dir, stage, tid)]
        if not todo:
            return 0
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc=stage, unit="task")
        try:
            processes = min(self.workers, at_once or self.workers, len(todo))
            if processes == 1:
                for job in todo:
                    _run_task(job)
                    bar and bar.update(1)
            else:
                # fork: workers inherit imported modules; each loads its own fastText model lazily.
                with mp.get_context("fork").Pool(processes) as pool:
                    for _ in pool.imap_unordered(_run_task, todo):
                        bar and bar.update(1)
        finally:  # the bar's line ends before a failed task's error is printed
            if bar:
                bar.close()
        return len(todo)
