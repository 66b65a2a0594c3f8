import json
import os

import numpy as np
import pytest

from megagpt.config import ConfigError, load_config, validate
from megagpt.errors import StorageError
from megagpt.data.datasets import build_datasets, cache_written, micro_batches, resolve_blend
from megagpt.data.shards import write_shard
from megagpt.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    out = tmp_path_factory.mktemp("mix")
    books = [f"Chapter {i}. The ship sailed on through the long night while the crew slept. " * 8 for i in range(60)]
    wiki = [f"Article {i}. A river is a natural flowing watercourse, usually freshwater. " * 8 for i in range(60)]
    tok = Tokenizer.train(books + wiki, vocab_size=300)
    write_shard(str(out / "books"), books, tok)
    write_shard(str(out / "wiki"), wiki, tok)
    (out / "mixture.json").write_text(json.dumps({"sources": [
        {"source": "books", "prefix": "books", "weight": 0.75}, {"source": "wiki", "prefix": "wiki", "weight": 0.25}]}))
    return out


def test_mixture_weights_set_the_sampling_shares(two_sources, world_of_one, tmp_path):
    cfg = load_config(None, [f"data.mixture={two_sources / 'mixture.json'}", "model.seq_length=32",
                             "model.vocab_size=300", f"run.dir={tmp_path}", ])
    train, valid = build_datasets(cfg, train_samples=4000, valid_samples=50)
    shares = np.bincount(train.dataset_index[:4000], minlength=2) / 4000
    assert shares == pytest.approx([0.75, 0.25], abs=0.01)
    assert len(valid) >= 50
    sample = train[0]
    assert sample["tokens"].shape == (32,) and sample["labels"].shape == (32,)
    assert sample["tokens"][1:].tolist() == sample["labels"][:-1].tolist()


def test_prefixes_without_weights_blend_by_size_over_as_many_epochs_as_the_run_reads(two_sources, world_of_one,
                                                                                     tmp_path):
    """megatron-core builds one epoch of an unweighted blend: a run past it ended in an IndexError on every rank,
    and a held-out set asked for more samples than the split's one epoch failed at step 0."""
    from megagpt.data.checks import shard_identity

    cfg = load_config(None, [f"data.prefixes=[{two_sources / 'books'}, {two_sources / 'wiki'}]", "model.seq_length=32",
                             "model.vocab_size=300", f"run.dir={tmp_path}"])
    train, valid = build_datasets(cfg, train_samples=4000, valid_samples=200)
    assert len(train) >= 4000 and len(valid) >= 200
    tokens = [shard_identity(str(two_sources / name))["tokens"] for name in ("books", "wiki")]
    shares = np.bincount(train.dataset_index[:4000], minlength=2) / 4000
    assert shares == pytest.approx([t / sum(tokens) for t in tokens], abs=0.01)
    train[3999], valid[199]  # noqa: B018 (read past the one epoch that was built)


def test_a_shard_of_several_sequences_a_document_is_refused(tmp_path):
    """Megatron-LM's --split-sentences shards: the split checks count documents and megatron-core's split sequences,
    so a split the check passed hung the run in megatron-core's epoch count."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megagpt.data.checks import check_shard
    from megagpt.errors import DataError

    builder = IndexedDatasetBuilder(str(tmp_path / "sent.bin"), dtype=np.uint16)
    for sentences in (2, 1, 1, 1, 1):
        for _ in range(sentences):
            builder.add_item(torch.arange(1, 40))
        builder.end_document()
    builder.finalize(str(tmp_path / "sent.idx"))
    with pytest.raises(DataError, match="sent holds 6 sequences in 5 documents \\(split into sentences"):
        check_shard(str(tmp_path / "sent"))


def test_a_held_out_split_smaller_than_its_samples_is_said(two_sources, world_of_one, tmp_path, capsys):
    """Two documents of 24 tokens filled 16 samples of 64: the loss was partly of text already in its context."""
    from megagpt.data.datasets import note_small_held_out

    cfg = load_config(None, [f"data.prefixes=[{two_sources / 'books'}]", "model.seq_length=32", "model.vocab_size=300",
                             f"run.dir={tmp_path}", "data.split=90,10,0"])
    _, valid = build_datasets(cfg, train_samples=64, valid_samples=400)
    tokens = int(valid.dataset.sequence_lengths[valid.indices].sum())
    note_small_held_out(valid, (tokens - 1) // 32, 32)
    assert capsys.readouterr().err == ""
    note_small_held_out(valid, (tokens - 1) // 32 + 1, 32)
    assert f"the held-out split holds {tokens} tokens, fewer than" in capsys.readouterr().err


def test_weights_whose_sum_overflows_are_one_line(two_sources, tmp_path):
    """megatron-core normalises by their sum: 1e308 twice failed its assertion, a traceback in every rank."""
    from megagpt.data.checks import check_training_data

    cfg = load_config(None, [f"data.prefixes=[{two_sources / 'books'}, {two_sources / 'wiki'}]",
                             "data.weights=[1.0e308, 1.0e308]", "model.vocab_size=300", f"run.dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"data.weights: weights \[1e\+308, 1e\+308\] must all be finite and "
                                          r"positive, and so must their sum"):
        check_training_data(cfg)


def test_data_parallel_ranks_split_the_same_global_batch(two_sources, world_of_one, tmp_path):
    cfg = load_config(None, [f"data.prefixes=[{two_sources / 'books'}]", "model.seq_length=16", "model.vocab_size=300",
                             f"run.dir={tmp_path}"])
    train, _ = build_datasets(cfg, train_samples=64, valid_samples=1)
    single = [t for t, _ in micro_batches(train, 8, 16, 4, 0, 1)]
    split = [t for r in range(2) for t, _ in micro_batches(train, 8, 16, 2, r, 2)]
    assert sorted(map(tuple, np.concatenate(single).tolist())) == sorted(map(tuple, np.concatenate(split).tolist()))


def test_broken_mixture_is_named(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"sources": [{"source": "x", "prefix": "missing", "weight": 1}]}))
    cfg = load_config(None, [f"data.mixture={tmp_path / 'm.json'}"])
    with pytest.raises(ConfigError, match="names shard .*missing whose .bin/.idx is missing"):
        resolve_blend(cfg)
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not a readable mixture file"):
        resolve_blend(cfg)


def test_split_with_no_documents_is_an_error_not_a_hang(two_sources, world_of_one, tmp_path):
    cfg = load_config(None, [f"data.prefixes=[{two_sources / 'books'}]", "data.split=969,30,1", f"run.dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"data.split='969,30,1' leaves the test split of .*books empty \(60 documents"):
        build_datasets(cfg, train_samples=64, valid_samples=1)


def test_a_mixture_of_nothing_or_of_one_shard_twice_is_named(two_sources, tmp_path):
    for sources, message in [([], "lists no sources"), ([{"source": "a", "prefix": str(two_sources / "books"),
                                                          "weight": 0.9},
                                                         {"source": "b", "prefix": str(two_sources / "books"),
                                                          "weight": 0.1}], "sources 0 and 1 name the same shard")]:
        (tmp_path / "m.json").write_text(json.dumps({"sources": sources}))
        with pytest.raises(ConfigError, match=message):  # a rank's AssertionError; weights that resumed unchecked
            resolve_blend(load_config(None, [f"data.mixture={tmp_path / 'm.json'}"]))


@pytest.mark.parametrize("link", ["symlinked files", "linked folder", "hard links"])
def test_one_shard_under_two_names_is_named(two_sources, tmp_path, link):
    """Linked .bin/.idx files under another name trained at double weight."""
    from megagpt.files import same_shard_twice

    books = two_sources / "books"
    if link == "linked folder":
        os.symlink(two_sources, tmp_path / "data")
        other = tmp_path / "data" / "books"
    else:
        other = tmp_path / "copy"
        for ext in (".bin", ".idx"):
            (os.symlink if link == "symlinked files" else os.link)(f"{books}{ext}", f"{other}{ext}")
    assert same_shard_twice([str(two_sources / "wiki"), str(books), str(other)]) == (1, 2)
    assert same_shard_twice([str(two_sources / "wiki"), str(books)]) is None
    with pytest.raises(ConfigError, match=r"names the shard of data.prefixes\[0\] again"):
        validate(load_config(None, [f"data.prefixes=[{books}, {other}]"]), 1)


def test_split_bounds_are_megatron_cores_and_count_tokens(tmp_path):
    """6,1,11 on 9 documents: summing the shares first gave the valid split one document where megatron-core gives
    none (a hang); a split whose documents hold no tokens hangs as well."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megagpt.data.datasets import check_split_sizes

    tok = Tokenizer.train(["some text to learn from"] * 20, vocab_size=300)
    write_shard(str(tmp_path / "nine"), [f"document number {i} " * 20 for i in range(9)], tok)
    with pytest.raises(ConfigError, match=r"data.split='6,1,11' leaves the valid split of .*nine empty"):
        check_split_sizes("6,1,11", [str(tmp_path / "nine")])
    builder = IndexedDatasetBuilder(str(tmp_path / "zero.bin"), dtype=np.uint16)
    for length in [100] * 9 + [0]:
        builder.add_document(torch.arange(length, dtype=torch.int64), [length])
    builder.finalize(str(tmp_path / "zero.idx"))
    with pytest.raises(ConfigError, match=r"leaves the valid split of .*zero without tokens \(1 documents of none\)"):
        check_split_sizes("9,1,0", [str(tmp_path / "zero")])
    check_split_sizes("8,2,0", [str(tmp_path / "zero")])


def test_a_batch_with_a_token_past_the_vocabulary_is_refused(two_sources, world_of_one, tmp_path):
    """At tp > 1 such a token silently read zeros from the embedding; at tp = 1 it was an IndexError."""
    from megagpt.errors import DataError

    cfg = load_config(None, [f"data.prefixes=[{two_sources / 'books'}]", "model.seq_length=32", "model.vocab_size=200",
                             f"run.dir={tmp_path}"])
    train, _ = build_datasets(cfg, train_samples=8, valid_samples=1)
    with pytest.raises(DataError, match=r"holds token id \d+, beyond model.vocab_size=200"):
        list(micro_batches(train, 0, 8, 4, 0, 1))


def test_a_damaged_sample_index_is_built_again(two_sources, world_of_one, tmp_path, capsys):
    """megatron-core writes its .npy indices in place: one cut short by a killed run failed every later start."""
    cfg = load_config(None, [f"data.prefixes=[{two_sources / 'books'}]", "model.seq_length=32", "model.vocab_size=300",
                             f"run.dir={tmp_path}"])
    first, _ = build_datasets(cfg, train_samples=64, valid_samples=4)
    shuffle = next((tmp_path / "data_cache").glob("*/*-train-shuffle_index.npy"))
    shuffle.write_bytes(shuffle.read_bytes()[:-40])
    again, _ = build_datasets(cfg, train_samples=64, valid_samples=4)
    assert "was damaged (a run stopped while writing it?): it is built again" in capsys.readouterr().err
    assert [again[i]["tokens"].tolist() for i in range(8)] == [first[i]["tokens"].tolist() for i in range(8)]


def test_a_sample_index_cache_that_cannot_be_written_is_one_line_naming_it(two_sources, world_of_one, tmp_path,
                                                                           monkeypatch):
    """megatron-core said "Failed to write dataset materials to the data cache directory", naming none, in a
    traceback (and at several ranks the others waited at a barrier for rank 0, then printed tracebacks of their own)."""
    (tmp_path / "taken").write_text("x")
    cfg = load_config(None, [f"data.prefixes=[{two_sources / 'books'}]", "model.seq_length=32", "model.vocab_size=300",
                             f"run.dir={tmp_path}", f"data.cache_dir={tmp_path / 'taken' / 'cache'}"])
    with pytest.raises(StorageError, match=rf"^the sample index cache {tmp_path}/taken/cache/[0-9a-f]{{16}} cannot be "
                                           r"written \(Not a directory\): give data.cache_dir") as raised:
        build_datasets(cfg, train_samples=64, valid_samples=4)
    assert raised.value.same_on_every_rank  # rank 0 found it, and told the others

    def full_disk(*args, **kwargs):  # what numpy.save's write says of a full disk: no file, no errno
        raise OSError("129036 requested and 102368 written")

    cfg = load_config(None, [f"data.prefixes=[{two_sources / 'books'}]", "model.seq_length=32", "model.vocab_size=300",
                             f"run.dir={tmp_path}", f"data.cache_dir={tmp_path / 'full'}"])
    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(StorageError, match=r"full/[0-9a-f]{16} cannot be written \(a short write, 129036 requested "
                                           r"and 102368 written: a full disk, or a quota\?\)"):
        build_datasets(cfg, train_samples=64, valid_samples=4)


def test_a_built_cache_is_read_without_writing(two_sources, world_of_one, tmp_path, monkeypatch):
    """A shared cache that is already built, and read-only, keeps working: nothing refuses it up front."""
    import os

    cfg = load_config(None, [f"data.prefixes=[{two_sources / 'books'}]", "model.seq_length=32", "model.vocab_size=300",
                             f"run.dir={tmp_path}"])
    first, _ = build_datasets(cfg, train_samples=64, valid_samples=4)

    def read_only(path, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(np, "save", read_only)
    monkeypatch.setattr(os, "makedirs", read_only)
    again, _ = build_datasets(cfg, train_samples=64, valid_samples=4)
    assert [again[i]["tokens"].tolist() for i in range(8)] == [first[i]["tokens"].tolist() for i in range(8)]


def test_an_error_naming_another_file_is_not_the_caches(tmp_path):
    with pytest.raises(FileNotFoundError):
        with cache_written(str(tmp_path / "cache" / "0123")):
            open(tmp_path / "shard.bin")


def test_more_steps_within_an_epoch_keep_the_sample_order_and_another_epoch_count_is_said(two_sources, world_of_one,
                                                                                         tmp_path, capsys):
    """Raising train.steps on resume rebuilds the index for more samples: within the epochs it had, the samples
    the run read come first in the same order; over more epochs megatron-core reshuffles them all, and the run
    says so."""
    from megagpt.data.datasets import note_epochs

    cfg = load_config(None, [f"data.prefixes=[{two_sources / 'books'}]", "model.seq_length=32", "model.vocab_size=300",
                             f"run.dir={tmp_path}"])
    short, _ = build_datasets(cfg, train_samples=16, valid_samples=4)
    longer, _ = build_datasets(cfg, train_samples=160, valid_samples=4)  # still one epoch of the books
    assert [longer[i]["tokens"].tolist() for i in range(16)] == [short[i]["tokens"].tolist() for i in range(16)]
    note_epochs(str(tmp_path), short, 0)
    note_epochs(str(tmp_path), longer, 4)
    assert "warning" not in capsys.readouterr().err
    several, _ = build_datasets(cfg, train_samples=2000, valid_samples=4)
    note_epochs(str(tmp_path), several, 40)
    err = capsys.readouterr().err
    assert "megagpt: warning: this resume builds the training split over other numbers of epochs" in err
    assert f"{two_sources / 'books'}: 1 -> " in err and "from step 41 on" in err
    assert [several[i]["tokens"].tolist() for i in range(16)] != [short[i]["tokens"].tolist() for i in range(16)]


def test_a_last_epoch_read_past_80_percent_is_said_to_reorder_the_samples(two_sources, world_of_one, tmp_path, capsys):
    """Within 2 epochs, megatron-core shuffles the second apart while less than 80% of it is read, with the first
    past that: raising train.steps across that line reordered every sample without the warning (same epochs)."""
    from megagpt.data.datasets import epoch_layout, note_epochs

    cfg = load_config(None, [f"data.prefixes=[{two_sources / 'books'}]", "model.seq_length=32", "model.vocab_size=300",
                             f"run.dir={tmp_path}"])
    one, _ = build_datasets(cfg, train_samples=16, valid_samples=4)
    per_epoch = len(one.sample_index) - 1
    little, _ = build_datasets(cfg, train_samples=per_epoch + per_epoch // 4, valid_samples=4)
    half, _ = build_datasets(cfg, train_samples=per_epoch + per_epoch // 2, valid_samples=4)
    most, _ = build_datasets(cfg, train_samples=per_epoch + per_epoch * 9 // 10, valid_samples=4)
    assert [epoch_layout(d) for d in (one, little, half, most)] == [
        {"epochs": 1, "last_epoch_apart": False}, {"epochs": 2, "last_epoch_apart": True},
        {"epochs": 2, "last_epoch_apart": True}, {"epochs": 2, "last_epoch_apart": False}]
    first = [little[i]["tokens"].tolist() for i in range(per_epoch)]
    assert [half[i]["tokens"].tolist() for i in range(per_epoch)] == first  # the same layout: the same order
    assert sum(most[i]["tokens"].tolist() == s for i, s in enumerate(first)) < per_epoch // 2  # another
    note_epochs(str(tmp_path), little, 0)
    note_epochs(str(tmp_path), half, 10)
    assert "warning" not in capsys.readouterr().err
    note_epochs(str(tmp_path), most, 20)
    err = capsys.readouterr().err
    assert "megagpt: warning: this resume builds the training split over other numbers of epochs" in err
    assert f"{two_sources / 'books'}: 2 (the last shuffled apart) -> 2 (shuffled together)" in err
    assert "from step 21 on" in err
