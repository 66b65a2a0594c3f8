"""What a run records of its inputs, and when a resume refuses (megagpt.train.inputs)."""

import json
import os
import shutil

import pytest

from megagpt.config import load_config
from megagpt.errors import CheckpointError
from megagpt.train.inputs import check_same_inputs, describe_inputs, stage_of
from tests.conftest import REPO, TINY


def shard(prefix, documents):
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for i in range(documents):
        builder.add_item(torch.arange(i + 3))
        builder.end_document()
    builder.finalize(prefix + ".idx")


def test_a_moved_project_with_a_relative_mixture_is_the_same_data(tmp_path, monkeypatch):
    project = tmp_path / "a"
    (project / "tokens").mkdir(parents=True)
    shard(str(project / "tokens" / "web"), 5)
    (project / "mixture.json").write_text(json.dumps({"sources": [{"source": "web", "prefix": "tokens/web",
                                                                   "weight": 1.0}]}))
    cfg = load_config(TINY, ["data.mixture=mixture.json", "run.dir=run"])
    monkeypatch.chdir(project)
    recorded = json.loads(json.dumps(describe_inputs(cfg)))  # as megagpt.json holds it
    assert {k: v for k, v in recorded["shard tokens/web"].items() if not k.endswith("sha256")} == \
        {"documents": 5, "tokens": sum(range(3, 8))}
    shutil.move(project, tmp_path / "b")
    monkeypatch.chdir(tmp_path / "b")
    check_same_inputs(recorded, cfg, "ckpt")  # the same files, elsewhere
    shard("tokens/web", 4)  # rebuilt smaller at the same path
    with pytest.raises(CheckpointError, match="tokens/web now holds 4 documents, 18 tokens \\(the run read 5, 25\\)"):
        check_same_inputs(recorded, cfg, "ckpt")
    shard("tokens/web", 5)
    (tmp_path / "b" / "mixture.json").write_text(json.dumps({"sources": [{"source": "web", "prefix": "tokens/web",
                                                                          "weight": 2.0, "epochs": 3}]}))
    with pytest.raises(CheckpointError, match="data.mixture's weights changed"):
        check_same_inputs(recorded, cfg, "ckpt")
    check_same_inputs(None, cfg, "ckpt")  # a checkpoint from before inputs were recorded resumes


def test_each_stage_records_its_own_inputs(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Q:"}\n')
    ppo = load_config(os.path.join(REPO, "configs", "rlhf", "tiny.yaml"),
                      [f"rlhf.prompts={prompts}", f"rlhf.actor_init={tmp_path}", f"rlhf.reward_init={tmp_path}",
                       "rlhf.ptx_coef=0"])
    assert stage_of(ppo) == "ppo"
    with pytest.raises(CheckpointError, match="megagpt.json not found"):  # an init dir with no checkpoint: one line
        describe_inputs(ppo)
    sft = load_config(TINY, [f"sft.data={prompts}", "data.prefixes=[/nowhere/shard]"])
    assert stage_of(sft) == "sft" and list(describe_inputs(sft)) == ["sft.data"]  # not the shards it does not read


def test_the_same_shards_written_absolutely_or_from_elsewhere_resume(tmp_path, monkeypatch):
    """An interactive run named its shard relatively; the Slurm script that resumes it names it absolutely, or runs
    in another directory: the same files, so the same run. Another shard at the same relative path is not."""
    from megagpt.train.checkpoint import check_same_run

    (tmp_path / "tokens").mkdir()
    shard(str(tmp_path / "tokens" / "web"), 5)
    monkeypatch.chdir(tmp_path)
    then = load_config(TINY, ["data.prefixes=[tokens/web]", "sft.init=runs/base"])
    recorded = json.loads(json.dumps(describe_inputs(then)))
    (tmp_path / "elsewhere").mkdir()
    for cwd, prefix, init in ((tmp_path, f"{tmp_path}/tokens/web", f"{tmp_path}/runs/base"),
                              (tmp_path / "elsewhere", "../tokens/web", "../runs/base")):
        monkeypatch.chdir(cwd)
        now = load_config(TINY, [f"data.prefixes=[{prefix}]", f"sft.init={init}"])
        check_same_run(then.to_dict(), now, "ckpt", str(tmp_path))
        check_same_inputs(recorded, now, "ckpt", str(tmp_path))
        with pytest.raises(CheckpointError, match="another config.*data.prefixes"):  # from before cwd was recorded
            check_same_run(then.to_dict(), now, "ckpt")
    (tmp_path / "elsewhere" / "tokens").mkdir()
    shard(str(tmp_path / "elsewhere" / "tokens" / "web"), 5)  # the same relative name, other files
    now = load_config(TINY, ["data.prefixes=[tokens/web]", "sft.init=runs/base"])
    check_same_run(then.to_dict(), now, "ckpt", str(tmp_path))  # written alike: a moved project
    check_same_inputs(recorded, now, "ckpt", str(tmp_path))  # ... and the same contents
    with pytest.raises(CheckpointError, match="another config.*data.prefixes"):
        check_same_run(then.to_dict(), load_config(TINY, ["data.prefixes=[tokens/web, tokens/web]"]), "ckpt",
                       str(tmp_path))


def test_a_shard_rewritten_in_its_middle_or_at_the_same_lengths_is_another_shard(tmp_path, monkeypatch):
    """Only the index's first and last MiB were hashed: documents swapped in between kept the shard's identity (and
    its sample-index cache, read into other documents' tokens), and so did text rewritten into as many tokens. A
    checkpoint from before, which recorded less, still resumes on the same shard."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megagpt.data.datasets import index_cache

    def write(lengths, first_token=0):
        builder = IndexedDatasetBuilder(str(tmp_path / "web.bin"), dtype=np.uint16)
        for n in lengths:
            builder.add_item(torch.full((n,), first_token))
            builder.end_document()
        builder.finalize(str(tmp_path / "web.idx"))

    lengths = [3 + i % 50 for i in range(300_000)]  # an index of 3.6 MB: more than its two edges
    write(lengths)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(TINY, ["data.prefixes=[web]", "run.dir=run"])
    recorded, cache = json.loads(json.dumps(describe_inputs(cfg))), index_cache(cfg, ["web"])
    old = {k: recorded["shard web"][k] for k in ("documents", "tokens", "index_sha256")}
    check_same_inputs({"shard web": old}, cfg, "ckpt")  # what a checkpoint recorded before
    lengths[150_000], lengths[150_001] = lengths[150_001], lengths[150_000]  # in neither MiB at the edges
    write(lengths)
    assert index_cache(cfg, ["web"]) != cache
    with pytest.raises(CheckpointError, match="web was rewritten \\(300000 documents"):
        check_same_inputs(recorded, cfg, "ckpt")
    write([3 + i % 50 for i in range(300_000)], first_token=7)  # the same lengths, other tokens
    with pytest.raises(CheckpointError, match="web was rewritten"):
        check_same_inputs(recorded, cfg, "ckpt")
