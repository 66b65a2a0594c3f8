"""Training and held-out samples from Megatron shards through megatron-core's datasets.

The blend is either `data.prefixes` (+ optional `data.weights`) or the `mixture.json`
the corpus pipeline writes: {"sources": [{"source", "prefix", "weight", ...}], ...}
with prefixes relative to that file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from megagpt.config import Config, ConfigError
from megagpt.errors import DataError, MegagptError, StorageError, on_every_rank
from megagpt.files import STORAGE_ERRNOS, same_shard_twice, writing


@dataclass
class _ShardTokenizer:
    """What GPTDataset asks of a tokenizer: the EOD id (document boundaries) and vocab size."""

    eod: int
    vocab_size: int

    @property
    def unique_identifiers(self) -> dict:  # part of megatron-core's index-cache key
        return {"class": "megagpt", "eod": self.eod, "vocab_size": self.vocab_size}


def resolve_blend(cfg: Config) -> tuple[list[str], Optional[list[float]]]:
    d = cfg.data
    if d.mixture is None:
        return list(d.prefixes), (list(map(float, d.weights)) if d.weights else None)
    try:
        with open(d.mixture) as f:
            sources = json.load(f)["sources"]
        base = os.path.dirname(os.path.abspath(d.mixture))
        prefixes = [os.path.join(base, s["prefix"]) for s in sources]
        weights = [float(s["weight"]) for s in sources]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"data.mixture={d.mixture!r} is not a readable mixture file: {exc}") from None
    if not prefixes:
        raise ConfigError(f"data.mixture={d.mixture!r} lists no sources")
    for prefix in prefixes:
        if not os.path.isfile(prefix + ".bin") or not os.path.isfile(prefix + ".idx"):
            raise ConfigError(f"data.mixture={d.mixture!r} names shard {prefix} whose .bin/.idx is missing")
    twice = same_shard_twice(prefixes)
    if twice:  # its weights would add up in training but not in what a checkpoint records
        raise ConfigError(f"data.mixture={d.mixture!r}: sources {twice[0]} and {twice[1]} name the same shard "
                          f"{prefixes[twice[1]]}: give it once, with the weight you mean")
    return prefixes, weights


def check_split_sizes(split: str, prefixes: list[str]) -> None:
    """Every split with a share must get tokens from every source.

    megatron-core's GPTDataset loops forever on a split with no tokens, so a small
    corpus with data.split=969,30,1 would hang instead of failing. The bounds are megatron-core's own
    (normalised shares, then summed: summing first rounds some splits the other way), and a split of documents
    that hold no tokens is as empty as one of none.
    """
    from megatron.core.datasets.blended_megatron_dataset_config import (convert_split_vector_to_split_matrix,
                                                                         parse_and_normalize_split)
    from megatron.core.datasets.indexed_dataset import _IndexReader

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    for prefix in prefixes:
        index = _IndexReader(prefix + ".idx", multimodal=False)  # kept alive while its arrays are read
        lengths = index.sequence_lengths  # one sequence per document in a megagpt or megatron text shard
        documents = len(index.document_indices) - 1
        for name, bounds in zip(("train", "valid", "test"), matrix):
            if bounds is None or bounds[1] == bounds[0]:
                continue
            begin, end = (int(round(b * float(documents))) for b in bounds)
            first, last = index.document_indices[begin], index.document_indices[end]
            if end == begin or not int(lengths[first:last].sum()):
                what = "empty" if end == begin else f"without tokens ({end - begin} documents of none)"
                raise ConfigError(f"data.split={split!r} leaves the {name} split of {prefix} {what} "
                                  f"({documents} documents in all): give it a larger share, or none")


def build_datasets(cfg: Config, train_samples: int, valid_samples: int, eod: int = 0):
    """(train, valid) GPTDatasets. Rank 0 builds first and writes the index cache, alone; then every other rank reads
    it, alone too. After each phase the ranks agree on what failed, so a failure is one line every rank raises:
    megatron-core's own rank-0-first build raised "Failed to write dataset materials..." on rank 0, or a
    FileNotFoundError on a rank whose node did not see rank 0's files, and left the others at a barrier, each with
    a traceback of a closed connection. A cache already built needs no write (read-only is fine)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    import torch.distributed as dist

    prefixes, weights = resolve_blend(cfg)
    if weights is None and len(prefixes) > 1:
        from megagpt.data.checks import shard_identity

        # megatron-core builds one epoch of an unweighted blend, and a run past it ended in an IndexError on every
        # rank: data.weights' default, the shards' sizes, given as weights
        weights = [float(shard_identity(prefix)["tokens"]) for prefix in prefixes]
    check_split_sizes(cfg.data.split, prefixes)  # also before any process starts; here too, since a miss hangs
    cache = index_cache(cfg, prefixes)
    ds_config = GPTDatasetConfig(
        random_seed=cfg.train.seed, sequence_length=cfg.model.seq_length, blend=(prefixes, weights),
        split=cfg.data.split, path_to_cache=cache,
        tokenizer=_ShardTokenizer(eod=eod, vocab_size=cfg.model.vocab_size),
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False,
    )

    def build():
        train, valid, _ = BlendedMegatronDatasetBuilder(
            GPTDataset, [train_samples, valid_samples, 0], lambda: True, ds_config).build()
        for name, ds, wanted in (("training", train, train_samples), ("held-out", valid, valid_samples)):
            # a run reading past it ends in an IndexError, hours in (a split with no share is config's to refuse)
            if ds is not None and len(ds) < wanted:
                raise DataError(f"the {name} split built {len(ds)} samples of the {wanted} the run reads "
                                f"(data.prefixes={prefixes}, data.split={cfg.data.split!r})")
        return train, valid

    if not dist.is_initialized():
        with cache_written(cache):
            drop_damaged_indices(cache)
            return build()
    built = _built_on_rank_0(build, cache)
    if dist.get_world_size() == 1:
        return built
    return _read_elsewhere(build, cache, built)


def _built_on_rank_0(build, cache: str):
    """Rank 0's datasets, built as megatron-core's writer before anyone reads (None on the other ranks)."""
    import torch.distributed as dist

    failure, built = None, None
    if dist.get_rank() == 0:
        try:
            with cache_written(cache), _as_one_process():
                drop_damaged_indices(cache)
                built = build()
        except Exception as exc:  # whatever it is, the other ranks must hear of it rather than wait
            failure = exc
    failed = _agree(failure, lambda exc: str(exc) if isinstance(exc, StorageError) else None)
    if failed:
        raise on_every_rank(StorageError(failed[0]) if failed[0] is not None else
                            DataError("rank 0 could not build the datasets (its error says why)"))
    return built


def _read_elsewhere(build, cache: str, built):
    """Every rank's datasets: rank 0 has its own; the others read the cache it wrote, each alone, and a rank that
    cannot (its node does not see rank 0's files yet, or sees one cut short) stops every rank."""
    import torch.distributed as dist

    failure = None
    if dist.get_rank() != 0:
        try:
            with _reading_alone():
                built = build()
        except Exception as exc:  # as on rank 0: the others must hear of it rather than wait
            failure = exc
    failed = _agree(failure, lambda exc: _unread(exc, cache))
    if failed:
        raise on_every_rank(_unreadable(cache, failed))
    return built


def _agree(failure: Optional[Exception], reason) -> dict:
    """{rank: reason(its error)} of the ranks that failed, the same on every rank (a collective every rank reaches).
    reason() is None for a bug, which its own rank raises here with its traceback."""
    import torch.distributed as dist

    mine = None if failure is None else [reason(failure)]
    said = [None] * dist.get_world_size()
    dist.all_gather_object(said, mine)
    if mine is not None and mine[0] is None:
        raise failure
    return {rank: s[0] for rank, s in enumerate(said) if s is not None}


def _unread(exc: Exception, cache: str) -> Optional[tuple[Optional[str], str]]:
    """(the file, why) where a rank could not read what rank 0 built from; None for a bug."""
    if isinstance(exc, OSError):
        return os.path.abspath(exc.filename) if isinstance(exc.filename, str) else None, exc.strerror or str(exc)
    # numpy maps a .npy shorter than its header says with a ValueError: whole on rank 0, cut short as seen here
    try:
        damaged = damaged_indices(cache) if isinstance(exc, (ValueError, EOFError)) else []
    except OSError:  # the cache cannot be listed: the ValueError came from elsewhere
        damaged = []
    return (os.path.join(cache, damaged[0]), f"cut short here, {exc}") if damaged else None


def _unreadable(cache: str, failed: dict) -> MegagptError:
    """One line for the ranks that could not read what rank 0 built from: the cache rank 0 wrote, or a shard."""
    bugs = sorted(rank for rank, said in failed.items() if said is None)
    if bugs:
        whose = "its error says" if len(bugs) == 1 else "their errors say"
        return DataError(f"{_ranks(bugs)} could not build the datasets ({whose} why)")
    first = min(failed)
    path, why = failed[first]
    if len(failed) > 1:
        why = f"rank {first}: {why}"
    if path is None or _within(path, cache):
        named = f": {os.path.basename(path)}" if path is not None else ""
        return DataError(f"{_ranks(sorted(failed))} cannot read the sample index cache {cache} that rank 0 wrote "
                         f"({why}{named}): give data.cache_dir a directory every node sees")
    return DataError(f"{_ranks(sorted(failed))} cannot read {path}, which rank 0 read ({why}): every node must see "
                     f"the data at the same path")


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"


def _within(path: str, top: str) -> bool:
    path, top = os.path.abspath(path), os.path.abspath(top)
    return path == top or path.startswith(top + os.sep)


@contextmanager
def _as_one_process():
    """megatron-core's dataset builder as in a process of its own: no barriers for ranks that are not building."""
    from unittest import mock

    import torch.distributed as dist

    with mock.patch.object(dist, "is_initialized", lambda: False):
        yield


@contextmanager
def _reading_alone():
    """megatron-core's dataset builder on a rank other than 0, its barriers (which hold that rank until rank 0 has
    built) made no-ops: rank 0 has built already. Not _as_one_process: a rank that thinks it is alone builds a
    missing index and writes it into the directory the others read; one that knows its rank only reads, and a
    missing file is an error (GPTDataset._build_document_sample_shuffle_indices, BlendedDataset._build_indices)."""
    from unittest import mock

    import torch.distributed as dist

    with mock.patch.object(dist, "barrier", lambda *args, **kwargs: None):
        yield


@contextmanager
def cache_written(cache: str):
    """A file system error while megatron-core writes (or megagpt tidies) the index cache `cache` becomes a
    StorageError naming it; megatron-core reports a full disk or a read-only directory as "Failed to write dataset
    materials to the data cache directory", naming neither."""
    try:
        yield
    except OSError as exc:
        named = os.path.abspath(exc.filename) if isinstance(exc.filename, str) else None
        top = os.path.abspath(cache)
        # numpy.save's short write (a full disk, a quota) names no file and no errno: "N requested and M written"
        short = exc.errno is None and re.fullmatch(r"\d+ requested and \d+ written", str(exc))
        ours = named is None and (exc.errno in STORAGE_ERRNOS or short) or named is not None and (
            named == top or named.startswith(top + os.sep) or top.startswith(named.rstrip(os.sep) + os.sep))
        if not ours:
            raise
        why = f"a short write, {exc}: a full disk, or a quota?" if short else exc.strerror or str(exc)
        raise StorageError(f"the sample index cache {cache} cannot be written ({why}): "
                           f"give data.cache_dir a directory this run can write") from None


def drop_damaged_indices(cache: str) -> None:
    """megatron-core writes its index .npy files in place, so a run killed meanwhile leaves one cut short, which
    every later start failed to map (ValueError: mmap length is greater than file size). The files of a damaged
    index (one hash) are removed, with a line saying so; megatron-core builds them again."""
    import sys

    for key in sorted({name.split("-")[0] for name in damaged_indices(cache)}):
        for name in os.listdir(cache):
            if name.startswith(key + "-"):
                os.remove(os.path.join(cache, name))
        print(f"megagpt: {cache}: the sample index {key} was damaged (a run stopped while writing it?): "
              f"it is built again", file=sys.stderr, flush=True)


def damaged_indices(cache: str) -> list[str]:
    """The .npy files in `cache` that numpy cannot map (cut short, or unreadable)."""
    import numpy as np

    if not os.path.isdir(cache):
        return []
    damaged = []
    for name in sorted(os.listdir(cache)):
        if name.endswith(".npy"):
            try:
                np.load(os.path.join(cache, name), mmap_mode="r")
            except (ValueError, OSError, EOFError):
                damaged.append(name)
    return damaged


def epoch_layout(d) -> dict:
    """How megatron-core's GPTDataset `d` orders its samples: its epochs, and whether the last one is shuffled apart
    from the others (megatron-core does so where the samples asked of it fill less than 80% of it). The order of
    the samples is the same for any number of samples with these two the same, and another wherever either differs."""
    import numpy as np

    epochs = len(d.document_index) // max(len(d.indices), 1)
    apart = False
    if epochs > 1:  # megatron.core.datasets.gpt_dataset.GPTDataset._build_document_sample_shuffle_indices
        seq, extra = d.config.sequence_length, d.config.add_extra_token_to_sequence
        per_epoch_tokens = int(np.sum(d.dataset.sequence_lengths[d.indices], dtype=np.int64))
        before_last = ((epochs - 1) * per_epoch_tokens - extra) // seq
        apart = d.num_samples - before_last < int(0.80 * ((per_epoch_tokens - extra) // seq))
    return {"epochs": epochs, "last_epoch_apart": bool(apart)}


def _says(layout) -> str:
    if not isinstance(layout, dict):  # data_epochs.json of an older megagpt: the epochs alone
        return str(layout)
    n = layout["epochs"]
    return f"{n} (the last shuffled apart)" if layout["last_epoch_apart"] else f"{n} (shuffled together)" if n > 1 \
        else str(n)


def _same_order(before, now: dict) -> bool:
    return before == now or (not isinstance(before, dict) and before == now["epochs"])


def note_small_held_out(valid, samples: int, seq_length: int) -> None:
    """Say where the held-out split holds fewer tokens than the held-out loss reads: megatron-core repeats its
    documents to fill the samples, and the loss is then partly of text already in the same context."""
    import sys

    sources = getattr(valid, "datasets", [valid])
    if not samples or not all(hasattr(d, "dataset") and hasattr(d, "indices") for d in sources):
        return  # no held-out loss, or not megatron-core's GPTDataset (SFT's, the reward model's)
    tokens = sum(int(d.dataset.sequence_lengths[d.indices].sum()) for d in sources)
    if tokens < samples * seq_length + 1:  # (consecutive samples share a token: a label and the next input)
        print(f"megagpt: warning: the held-out split holds {tokens} tokens, fewer than the {samples * seq_length + 1} "
              f"its train.eval_samples={samples} samples read: its documents repeat within them (give data.split's "
              f"held-out share more, or ask fewer train.eval_samples)", file=sys.stderr, flush=True)


def note_epochs(run_dir: str, train, resumed_at: int) -> None:
    """Record how many epochs of each source the training split was built with, and whether its last epoch is
    shuffled apart (run.dir/data_epochs.json), and say so where a resume changes them: raising train.steps keeps the
    sample order while each source keeps both, but megatron-core shuffles the epochs of a source together (the
    last one apart where less than 80% of it is read), so another count, or a last epoch read past that 80% (or
    back under it), reorders every sample, those the run has read included."""
    import sys

    sources = getattr(train, "datasets", [train])
    if not all(hasattr(d, "document_index") and hasattr(d, "indices") for d in sources):
        return  # not megatron-core's GPTDataset (SFT's, the reward model's)
    layouts = {d.dataset_path: epoch_layout(d) for d in sources}
    path = os.path.join(run_dir, "data_epochs.json")
    try:
        with open(path) as f:
            before = json.load(f)
    except (OSError, ValueError):
        before = None
    if resumed_at and isinstance(before, dict):
        changed = ", ".join(f"{p}: {_says(before.get(p))} -> {_says(n)}" for p, n in layouts.items()
                            if not _same_order(before.get(p), n))
        if changed:
            print(f"megagpt: warning: this resume builds the training split over other numbers of epochs, or shuffles "
                  f"their last apart where it did not or together where it did ({changed}): "
                  f"megatron-core shuffles a source's epochs together (the last apart where less than 80% of it is "
                  f"read), so from step {resumed_at + 1} on the samples come in an order the run did not start with "
                  f"(some it read may come again)", file=sys.stderr, flush=True)
    with writing(path, path + ".tmp"):
        with open(path + ".tmp", "w") as f:
            json.dump(layouts, f)
        os.replace(path + ".tmp", path)


def index_cache(cfg: Config, prefixes: list[str]) -> str:
    """Where megatron-core keeps its sample indices for these shards: a folder per state of their contents, since
    it names its files by the dataset's settings and paths alone (a shard rebuilt in place would be read through
    the old run's indices: samples past its end, or across other documents' boundaries)."""
    from megagpt.data.checks import shard_identity

    state = json.dumps([shard_identity(p) for p in prefixes], sort_keys=True)
    return os.path.join(cfg.data.cache_dir or os.path.join(cfg.run.dir, "data_cache"),
                        hashlib.sha256(state.encode()).hexdigest()[:16])


def micro_batches(dataset, first_sample: int, samples: int, micro_batch_size: int, dp_rank: int, dp_size: int
                  ) -> Iterator[tuple]:
    """This DP rank's micro-batches of samples [first_sample, first_sample + samples).

    Each rank takes a contiguous slice, so the union over ranks is the same set of
    samples at every layout: what makes losses comparable across layouts.
    """
    per_rank = samples // dp_size
    start = first_sample + dp_rank * per_rank
    # model.vocab_size, for the shards build_datasets reads (SFT's and fine-tuning's datasets tokenize themselves)
    shard_tokenizer = getattr(getattr(dataset, "config", None), "tokenizer", None)
    vocab = shard_tokenizer.vocab_size if isinstance(shard_tokenizer, _ShardTokenizer) else None
    for offset in range(0, per_rank, micro_batch_size):
        items = [dataset[start + offset + i] for i in range(micro_batch_size)]
        tokens = torch.stack([it["tokens"] for it in items])
        labels = torch.stack([it["labels"] for it in items])
        loss_mask = torch.stack([it["loss_mask"] for it in items]).float()
        top = int(torch.maximum(tokens.max(), labels.max())) if vocab else 0  # on the host, before the device
        if vocab is not None and top >= vocab:  # tp = 1: the embedding's IndexError; tp > 1: it silently reads zeros
            raise DataError(f"training sample {start + offset}-{start + offset + micro_batch_size - 1} holds token id "
                            f"{top}, beyond model.vocab_size={vocab}: its shard was made with another tokenizer")
        yield tokens, (labels, loss_mask)
