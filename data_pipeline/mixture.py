"""Weighted mixtures of finished corpus runs, written as the mixture.json training reads.

Each source is a `megagpt corpus run` output; all must share one tokenizer (set
tokenize.tokenizer to the same file or GPT-2 directory in each run). For a token budget,
the file also records how many epochs of each source the weights imply (GPT-3 Table 2.2 reports
these: 0.44 epochs of Common Crawl, 3.4 of Wikipedia).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from data_pipeline.io import write_json
from megagpt.config import load_config
from megagpt.data.tokenizer import Tokenizer
from megagpt.errors import ConfigError, DataError
from megagpt.files import first_repeat, same_shard_twice


@dataclass
class MixtureSection:
    sources: list = field(default_factory=list)  # [{source, run, weight[, name]}]
    token_budget: Optional[int] = None
    out: str = "runs/mixture"


@dataclass
class MixConfig:
    mixture: MixtureSection = field(default_factory=MixtureSection)


def _run_source(entry: dict, i: int) -> dict:
    try:
        name, run_dir, weight = entry["source"], entry["run"], entry["weight"]
        if isinstance(weight, bool):  # YAML's `true` is no weight, though float() takes it
            raise TypeError
        weight = float(weight)
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"mixture.sources[{i}]={entry!r} needs source, run and a numeric weight") from None
    if not (math.isfinite(weight) and weight > 0):  # NaN passes a plain `<= 0` test
        raise ConfigError(f"mixture.sources[{i}].weight={weight} must be finite and positive")
    path = os.path.join(run_dir, "mixture.json")
    if not os.path.isfile(path):
        try:
            with open(os.path.join(run_dir, "stats.json")) as f:
                worst = json.load(f).get("kept_nothing")
        except (OSError, ValueError):
            worst = None
        if worst:
            from data_pipeline.pipeline import kept_nothing_why

            raise ConfigError(f"mixture.sources[{i}].run={run_dir!r} kept no documents ({kept_nothing_why(worst)}): "
                              f"nothing to mix")
        raise ConfigError(f"mixture.sources[{i}].run={run_dir!r} has no mixture.json (is the corpus run finished?)")
    with open(path) as f:
        run = json.load(f)
    match = [s for s in run["sources"] if s["source"] == name]
    if not match:
        raise ConfigError(f"mixture.sources[{i}]: run {run_dir!r} holds no source {name!r}")
    tokenizer = os.path.abspath(os.path.join(run_dir, run["tokenizer"]))
    if not os.path.isfile(tokenizer):
        raise DataError(f"{path} names tokenizer {tokenizer}, which is missing")
    label = entry.get("name", name)  # what the mixture calls it: two runs may share a source name
    if not isinstance(label, str) or not label:
        raise ConfigError(f"mixture.sources[{i}].name={label!r} must be a non-empty name")
    return {"source": label, "weight": weight, "prefix": os.path.abspath(os.path.join(run_dir, match[0]["prefix"])),
            "tokens": match[0]["tokens"], "documents": match[0]["documents"], "tokenizer": tokenizer}


def mix(cfg: MixConfig) -> dict:
    m = cfg.mixture
    if not m.sources:
        raise ConfigError("mixture.sources=[] is empty")
    sources = [_run_source(entry, i) for i, entry in enumerate(m.sources)]
    twice = same_shard_twice(s["prefix"] for s in sources)
    if twice:  # listed twice, its weight would count twice
        first, again = twice
        raise ConfigError(f"mixture.sources[{again}] names {sources[again]['source']!r} of {m.sources[again]['run']!r}, "
                          f"which mixture.sources[{first}] names already: give it once, with the weight you mean")
    twice = first_repeat(s["source"] for s in sources)
    if twice:  # training and its checkpoints tell the shards apart by these names
        first, again = twice
        raise ConfigError(f"mixture.sources[{again}] and mixture.sources[{first}] are both called "
                          f"{sources[again]['source']!r}: give one a name of its own (name: ...)")
    if m.token_budget is not None and m.token_budget < 1:
        raise ConfigError(f"mixture.token_budget={m.token_budget} must be at least 1 (or null: no budget)")
    tokenizers = {s["tokenizer"]: Tokenizer.load(s["tokenizer"]).fingerprint for s in sources}
    if len(set(tokenizers.values())) > 1:
        raise ConfigError(f"mixture sources use different tokenizers ({', '.join(sorted(tokenizers))}); "
                          "tokenize every run with the same tokenize.tokenizer")
    total = sum(s["weight"] for s in sources)
    if not math.isfinite(total):  # each finite, their sum past a float: every share would be 0
        raise ConfigError(f"mixture.sources' weights sum to {total}: give them on a smaller scale (only their "
                          f"ratios matter)")
    out = os.path.abspath(m.out)
    entries = []
    for s in sources:
        weight = s["weight"] / total
        entry = {"source": s["source"], "prefix": os.path.relpath(s["prefix"], out), "weight": float(f"{weight:.6g}"),
                 "tokens": s["tokens"], "documents": s["documents"]}
        if m.token_budget is not None:
            entry["epochs"] = round(weight * m.token_budget / max(s["tokens"], 1), 4)
        entries.append(entry)
    summary = {"tokenizer": os.path.relpath(sources[0]["tokenizer"], out), "token_budget": m.token_budget,
               "sources": entries}
    write_json(os.path.join(out, "mixture.json"), summary)
    return summary


def load_mix_config(path: Optional[str], overrides=()) -> MixConfig:
    return load_config(path, overrides, root=MixConfig)
