"""What a training run reads, recorded in each checkpoint so that a resume reads the same.

The config names its inputs by path; check_same_run compares those. A file rewritten in place at the
same path (a corpus rebuilt with other filters, demonstrations edited, a reward-model run trained
further so its `latest` moved) would continue the run on other data or against another reward
model, with the data loader's position and megatron-core's sample index made for the old files.
"""

from __future__ import annotations

import os

from megagpt.config import Config, setting, stage_of
from megagpt.errors import CheckpointError
from megagpt.files import same_path, sha256_file

# The JSONL files each stage reads (the key validate() tells the stages apart by comes first).
_FILES = {"ppo": ("rlhf.prompts",), "finetune": ("finetune.train", "finetune.test"), "sft": ("sft.data",),
          "rm": ("rm.data", "rm.demonstrations")}


def describe_inputs(cfg: Config) -> dict:
    """key -> what it holds now: a JSONL file's sha256, a shard's documents and tokens (and a hash of its index's
    edges), a mixture's weights, PPO's frozen models as the sha256 of their checkpoint's megagpt.json (which lists
    every file's). The stages' tokenizers are checked against the data and checkpoints at each start instead."""
    stage = stage_of(cfg)
    found = {key: sha256_file(setting(cfg, key)) for key in _FILES.get(stage, ())}
    if stage == "ppo":
        from megagpt.train.checkpoint import META, read_meta, resolve_checkpoint

        for key in ("rlhf.actor_init", "rlhf.reward_init"):  # the reference and reward models are read afresh
            path = resolve_checkpoint(setting(cfg, key))
            read_meta(path)  # a directory that holds no checkpoint says so, in one line
            found[key] = {"checkpoint": os.path.abspath(path), "meta_sha256": sha256_file(os.path.join(path, META))}
    if stage == "pretrain" or (stage == "ppo" and cfg.rlhf.ptx_coef):
        from megagpt.data.checks import shard_identity
        from megagpt.data.datasets import resolve_blend

        prefixes, weights = resolve_blend(cfg)
        # named as the config or mixture.json names them: a moved project (a relative path) is the same data
        names = [s["prefix"] for s in _mixture(cfg.data.mixture)] if cfg.data.mixture else list(prefixes)
        if cfg.data.mixture is not None:
            found["data.mixture"] = dict(zip(names, weights))  # its weights; its advisory fields may change
        for name, prefix in zip(names, prefixes):
            found[f"shard {name}"] = shard_identity(prefix)
    return found


def _mixture(path: str) -> list[dict]:
    import json

    with open(path) as f:  # resolve_blend has read it already, and said what was wrong with it
        return json.load(f)["sources"]


def check_same_inputs(recorded: dict | None, cfg: Config, path: str, cwd: str | None = None) -> None:
    """A resume reads what the checkpoint's run read (a checkpoint from before inputs were recorded: not checked).
    cwd: where that run ran, which its relative shard prefixes were read from."""
    if recorded is None:
        return
    now = describe_inputs(cfg)
    for key in [k for k in recorded if k.startswith("shard ") and k not in now]:  # the same shard, written otherwise
        here = next((k for k in now if k.startswith("shard ") and k not in recorded and same_path(key[6:], cwd, k[6:])),
                    None)
        if here is not None:
            recorded = {**recorded, here: recorded[key]}
            del recorded[key]
    changed = [_change(key, recorded[key], now.get(key)) for key in recorded if not _same(recorded[key], now.get(key))]
    if changed:
        raise CheckpointError(f"run.dir={cfg.run.dir!r}: {'; '.join(changed[:3])}{'; ...' if len(changed) > 3 else ''}"
                              f" since checkpoint {path} was saved; a resume must read what the run read: restore "
                              f"them, or start afresh (train.resume=false, or a new run.dir)")


def _change(key: str, then, now) -> str:
    if key.startswith("shard "):
        if now is None:
            return f"{key[6:]} is no longer in the data"
        if (then["documents"], then["tokens"]) == (now["documents"], now["tokens"]):
            return f"{key[6:]} was rewritten ({now['documents']} documents, {now['tokens']} tokens as before)"
        return (f"{key[6:]} now holds {now['documents']} documents, {now['tokens']} tokens (the run read "
                f"{then['documents']}, {then['tokens']})")
    if key in ("rlhf.actor_init", "rlhf.reward_init"):
        if now["checkpoint"] == then["checkpoint"]:
            return f"{key}'s checkpoint {now['checkpoint']} was rewritten"
        return (f"{key} now names checkpoint {now['checkpoint']}, not the one the run started from "
                f"({then['checkpoint']}: give that one)")
    if key == "data.mixture":
        return f"data.mixture's weights changed ({then} -> {now})"
    return f"{key}'s contents changed"


def _same(then, now) -> bool:
    if isinstance(then, dict) and "documents" in then:  # a shard: what the checkpoint recorded of it (a checkpoint
        return isinstance(now, dict) and all(now.get(k) == v for k, v in then.items())  # from before records less)
    return _identity(now) == _identity(then)


def _identity(described):
    """What must match: a checkpoint's contents, wherever it now lies (a copied or moved run dir is the same)."""
    return described["meta_sha256"] if isinstance(described, dict) and "meta_sha256" in described else described
