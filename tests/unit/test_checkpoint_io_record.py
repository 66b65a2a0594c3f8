"""checkpoint_io.jsonl, which benchmarks/checkpoint_io.py reads: what a resume's load record counts."""

import json
import os
from types import SimpleNamespace

from megagpt.config import load_config
from megagpt.train import checkpoint
from megagpt.train.checkpoint import (FORMAT_VERSION, LATEST, META, Checkpointer, checkpoint_root, layout_of,
                                      model_shape, tag_for)

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "configs", "demo", "tiny.yaml")


def test_the_load_record_of_a_resume_counts_its_checksum_pass(tmp_path, monkeypatch, world_of_one):
    """The record's bytes are the whole checkpoint, which only the checksum pass reads (the load itself reads
    DeepSpeed's files or universal/): its seconds left that pass out, and the benchmark's load GB/s came out
    2.8x too high (configs/bench/cpu-small.yaml at 2 layers)."""
    cfg = load_config(TINY, [f"run.dir={tmp_path}", "parallel.tp=1", "parallel.pp=1"])
    path = os.path.join(checkpoint_root(cfg.run.dir), tag_for(2))
    os.makedirs(path)
    meta = {"format_version": FORMAT_VERSION, "step": 2, "consumed_samples": 32, "consumed_tokens": 2048,
            "layout": layout_of(cfg, 1), "model": model_shape(cfg), "weights_only": False, "universal": True,
            "config": cfg.to_dict(), "inputs": None, "files": {}}
    with open(os.path.join(path, META), "w") as f:
        json.dump(meta, f)
    with open(os.path.join(checkpoint_root(cfg.run.dir), LATEST), "w") as f:
        f.write(tag_for(2) + "\n")

    now = [0.0]  # a clock the test moves: 7 s of checksums, then 1 s in DeepSpeed's loader

    def checksums_pass(p, under=""):
        now[0] += 7.0

    def deepspeed_load(*args, **kwargs):
        now[0] += 1.0
        return "loaded", {}

    monkeypatch.setattr(checkpoint, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(checkpoint, "verify_everywhere", checksums_pass)
    monkeypatch.setattr(checkpoint, "partitioned_without_zero", lambda engine: False)
    monkeypatch.setattr(Checkpointer, "_restore_rng", lambda self, p: None)
    ckpt = Checkpointer.__new__(Checkpointer)  # no engine to build: the loader is the stub above
    ckpt.cfg, ckpt.pc, ckpt.rank, ckpt.problem = cfg, SimpleNamespace(dp=1), 0, None
    ckpt.root, ckpt.engine = checkpoint_root(cfg.run.dir), SimpleNamespace(load_checkpoint=deepspeed_load)

    assert ckpt.resume().step == 2
    with open(os.path.join(cfg.run.dir, "checkpoint_io.jsonl")) as f:
        record = json.loads(f.readline())
    assert (record["event"], record["seconds"]) == ("load", 8.0)
