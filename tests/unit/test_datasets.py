import json

import numpy as np
import pytest

from megagpt.config import ConfigError, load_config
from megagpt.data.datasets import build_datasets, micro_batches, resolve_blend
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
