"""Two gloo ranks build the datasets while rank 1's view of the sample index cache rank 0 wrote fails.

megatron-core's rank-0-first build left a rank that could not read rank 0's files with a FileNotFoundError
traceback and the others at its next barrier; a rank that built alone to avoid the barriers would have built the
missing index again and written it into the directory every rank reads."""

from __future__ import annotations

import multiprocessing
import os
import queue
import re
from contextlib import ExitStack
from unittest import mock

import pytest

pytestmark = pytest.mark.slow
SCENARIOS = ("sees", "unseen", "cut", "bug")


def _rank_one_view(stack: ExitStack, scenario: str, cache_root: str, saved: list) -> None:
    """Rank 1's file system as `scenario` has it: rank 0's cache files invisible (a node that does not see them
    yet), mapped cut short, or a bug in reading them. Every numpy.save it makes is recorded."""
    import numpy as np

    load, save, isfile = np.load, np.save, os.path.isfile

    def ours(path) -> bool:
        return str(path).startswith(cache_root)

    def seen_load(path, *args, **kwargs):
        if ours(path) and scenario == "unseen":
            raise FileNotFoundError(2, "No such file or directory", str(path))
        if ours(path) and scenario == "cut":
            raise ValueError("mmap length is greater than file size")
        if ours(path) and scenario == "bug":
            raise KeyError("a bug")
        return load(path, *args, **kwargs)

    def recorded_save(path, *args, **kwargs):
        saved.append(str(path))
        return save(path, *args, **kwargs)

    stack.enter_context(mock.patch.object(np, "load", seen_load))
    stack.enter_context(mock.patch.object(np, "save", recorded_save))
    if scenario == "unseen":
        stack.enter_context(mock.patch.object(os.path, "isfile", lambda p: not ours(p) and isfile(p)))


def _rank(rank: int, port: int, prefixes: list[str], root: str, results) -> None:
    import torch.distributed as dist

    from megagpt.config import load_config
    from megagpt.data.datasets import build_datasets
    from megagpt.errors import MegagptError

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    for scenario in SCENARIOS:
        run_dir = os.path.join(root, scenario)
        cfg = load_config(None, [f"data.prefixes=[{','.join(prefixes)}]", "data.weights=[3,1]", "model.seq_length=32",
                                 "model.vocab_size=300", f"run.dir={run_dir}"])
        saved: list[str] = []
        with ExitStack() as stack:
            if rank == 1:
                _rank_one_view(stack, scenario, os.path.join(run_dir, "data_cache"), saved)
            try:
                train, _ = build_datasets(cfg, train_samples=64, valid_samples=4)
                said = ("built", [train[i]["tokens"].tolist() for i in range(4)])
            except MegagptError as exc:
                said = (type(exc).__name__, str(exc), exc.same_on_every_rank)
            except Exception as exc:  # the bug, on the rank where it happened
                said = ("traceback", repr(exc))
        results.put((scenario, rank, said, saved))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    """Two sources blended: megatron-core caches the blend's indices too (BlendedDataset)."""
    from megagpt.data.shards import write_shard
    from megagpt.data.tokenizer import Tokenizer

    out = tmp_path_factory.mktemp("shards")
    books = [f"Chapter {i}. The ship sailed on through the long night while the crew slept. " * 8 for i in range(60)]
    wiki = [f"Article {i}. A river is a natural flowing watercourse, usually freshwater. " * 8 for i in range(60)]
    tok = Tokenizer.train(books + wiki, vocab_size=300)
    write_shard(str(out / "books"), books, tok)
    write_shard(str(out / "wiki"), wiki, tok)
    return [str(out / "books"), str(out / "wiki")]


@pytest.fixture(scope="module")
def outcomes(shards, tmp_path_factory) -> dict:
    """{scenario: {rank: (what build_datasets did, numpy.save's files)}}, from one world of two spawned ranks."""
    from megagpt.parallel.distributed import free_port

    root = str(tmp_path_factory.mktemp("runs"))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    ranks = [context.Process(target=_rank, args=(r, port, shards, root, results)) for r in range(2)]
    for p in ranks:
        p.start()
    got = {}
    try:
        for _ in range(2 * len(SCENARIOS)):  # a rank left at a barrier would leave this empty
            scenario, rank, said, saved = results.get(timeout=180)
            got.setdefault(scenario, {})[rank] = (said, saved)
    except queue.Empty:
        came = {scenario: {rank: said[0] for rank, (said, _) in by_rank.items()} for scenario, by_rank in got.items()}
        pytest.fail(f"the ranks hung: only {came} came back")
    finally:
        for p in ranks:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return {"root": root, **got}


def test_rank_one_reads_rank_zeros_cache_without_writing_it(outcomes):
    (zero, _), (one, saved) = outcomes["sees"][0], outcomes["sees"][1]
    assert zero[0] == "built" and one == zero
    assert saved == []


@pytest.mark.parametrize("scenario,why", [
    ("unseen", r"No such file or directory: [0-9a-f]+-GPTDataset-train-\w+\.npy"),
    ("cut", r"cut short here, mmap length is greater than file size: "
            r"[0-9a-f]+-(GPT|Blended)Dataset-(train|valid)-\w+\.npy")])
def test_a_cache_rank_one_cannot_read_is_one_line_from_every_rank(outcomes, scenario, why):
    (zero, _), (one, saved) = outcomes[scenario][0], outcomes[scenario][1]
    assert one == zero and zero[0] == "DataError" and zero[2], (zero, one, saved)  # raised alike: printed once
    cache, message = os.path.join(outcomes["root"], scenario, "data_cache"), zero[1]
    assert re.fullmatch(rf"rank 1 cannot read the sample index cache {cache}/[0-9a-f]{{16}} that rank 0 wrote "
                        rf"\({why}\): give data.cache_dir a directory every node sees", message), message
    assert saved == []  # rank 1 did not build the index it could not see


def test_a_bug_reading_the_cache_keeps_its_traceback_where_it_happened(outcomes):
    (zero, _), (one, _) = outcomes["bug"][0], outcomes["bug"][1]
    assert one == ("traceback", "KeyError('a bug')")
    assert zero == ("DataError", "rank 1 could not build the datasets (its error says why)", True)
