"""`megagpt corpus report RUN_DIR`: PNG plots of a finished run and a summary table."""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from data_pipeline.io import read_jsonl_gz
from megagpt.errors import DataError

FUNNEL = ("read", "url", "extract", "langid", "filters", "quality", "pii", "dedup", "decontam")


def summary_table(stats: dict) -> str:
    rows = [f"{'stage':<10}{'in':>10}{'kept':>10}{'dropped':>10}  top reasons"]
    for stage in FUNNEL:
        s = stats["stages"].get(stage)
        if not s:
            continue
        reasons = sorted(s["dropped"].items(), key=lambda kv: -kv[1])[:3]
        rows.append(f"{stage:<10}{s['in']:>10}{s['kept']:>10}{sum(s['dropped'].values()):>10}  "
                    + ", ".join(f"{r} ({n})" for r, n in reasons))
    skipped = stats["stages"].get("read", {}).get("skipped", {})
    if skipped:
        rows.append(f"records holding no page, skipped: {sum(skipped.values())} ("
                    + ", ".join(f"{kind} {n}" for kind, n in sorted(skipped.items(), key=lambda kv: -kv[1])) + ")")
    redacted = stats["stages"].get("pii", {}).get("redacted", {})
    if redacted:
        rows.append("personal data replaced (in pages before dedup): " +
                    ", ".join(f"{kind} {n}" for kind, n in redacted.items()))
    unjudged = stats["stages"].get("url", {}).get("skipped", {})
    if unjudged:
        rows.append(f"url: kept with no host to judge: {sum(unjudged.values())}")
    rows.append(f"documents {stats['documents']}, tokens {stats['tokens']}, file errors {len(stats['errors'])}")
    return "\n".join(rows)


def write_report(run_dir: str) -> list[str]:
    """Write funnel.png, lengths.png and scores.png into <run_dir>/report; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.path.join(run_dir, "stats.json")
    if not os.path.isfile(path):
        raise DataError(f"{path} not found: is {run_dir} a finished corpus run?")
    with open(path) as f:
        stats = json.load(f)
    lengths, scores = _lengths_and_scores(sorted(glob.glob(os.path.join(run_dir, "documents", "*", "*.jsonl.gz"))))
    out = os.path.join(run_dir, "report")
    os.makedirs(out, exist_ok=True)
    written = []

    stages = [s for s in FUNNEL if s in stats["stages"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(stages, [stats["stages"][s]["in"] for s in stages], color="#c8d6e5", label="in")
    ax.bar(stages, [stats["stages"][s]["kept"] for s in stages], color="#2e86de", label="kept")
    ax.set_ylabel("documents")
    ax.set_title("Documents through each stage")
    ax.legend()
    written.append(_save(fig, os.path.join(out, "funnel.png")))

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(lengths if len(lengths) else [0], bins=40, color="#2e86de")
    ax.set_xlabel("characters per kept document")
    ax.set_ylabel("documents")
    ax.set_title("Length of kept documents")
    written.append(_save(fig, os.path.join(out, "lengths.png")))

    fig, axes = plt.subplots(1, max(len(scores), 1), figsize=(8, 4), squeeze=False)
    for ax, (key, counts) in zip(axes[0], scores.items()):
        ax.hist(SCORE_BINS[:-1], bins=SCORE_BINS, weights=counts, color="#10ac84")
        ax.set_xlabel(key)
        ax.set_ylabel("documents")
    fig.suptitle("Scores of kept documents")
    written.append(_save(fig, os.path.join(out, "scores.png")))
    return written


SCORE_BINS = np.linspace(0.0, 1.0, 31)


def _lengths_and_scores(paths: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The kept documents' lengths (4 bytes each) and their scores' histograms over SCORE_BINS, read shard by
    shard: a CommonCrawl run's kept text (hundreds of GB) was loaded into one list."""
    lengths, counts = [], {}
    for path in paths:
        shard_lengths, values = [], {"lang_score": [], "quality": []}
        for d in read_jsonl_gz(path):
            shard_lengths.append(len(d["text"]))
            for key, found in values.items():
                if key in d:
                    found.append(d[key])
        lengths.append(np.asarray(shard_lengths, dtype=np.int32))
        for key, found in values.items():
            if found:
                counts[key] = counts.get(key, 0) + np.histogram(found, bins=SCORE_BINS)[0]
    return (np.concatenate(lengths) if lengths else np.zeros(0, np.int32)), \
        {key: counts[key] for key in ("lang_score", "quality") if key in counts}


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
