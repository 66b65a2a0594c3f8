"""GPT-3's quality filter: a fastText classifier of curated text (positive) against raw crawl
(negative), and the keep rule `numpy.random.pareto(alpha) > 1 - score` with alpha = 9.

The Pareto draw is seeded by the document id, so a rerun keeps exactly the same documents.
numpy's pareto is the Lomax distribution, so a document with score s is kept with
probability (2 - s) ** -alpha.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from typing import Iterable

import numpy as np

from megagpt.errors import DataError

POSITIVE, NEGATIVE = "__label__hq", "__label__lq"
CHECKED_EXAMPLES = 2000  # per class, scored after training to tell whether the classifier separates them


def _line(text: str) -> str:
    return " ".join(text.lower().split())


def train_quality(positive: Iterable[str], negative: Iterable[str], out_path: str, epochs: int = 10,
                  dim: int = 32, seed: int = 0) -> dict:
    """Train and save the classifier; returns the example counts and each class's mean score over its first
    CHECKED_EXAMPLES training examples (a classifier trained on too few updates scores every text about 0.5, and
    the Pareto rule then drops most good pages: the caller says so). One thread, so training is reproducible."""
    import fasttext

    counts = {"positive": 0, "negative": 0}
    held: dict[str, list[str]] = {"positive": [], "negative": []}  # the examples scored after training
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    # beside the model, not in $TMPDIR: compute nodes' /tmp is small, and the training set can be tens of GB
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8", dir=out_dir,
                                     prefix=".train-quality-") as f:
        for label, texts, key in ((POSITIVE, positive, "positive"), (NEGATIVE, negative, "negative")):
            for text in texts:
                if text.strip():
                    line = _line(text)
                    f.write(f"{label} {line}\n")
                    counts[key] += 1
                    if len(held[key]) < CHECKED_EXAMPLES:
                        held[key].append(line)
        train_file = f.name
    try:
        if not counts["positive"] or not counts["negative"]:
            raise DataError(f"need positive and negative examples, got {counts}")
        model = fasttext.train_supervised(train_file, epoch=epochs, dim=dim, wordNgrams=2, minCount=1,
                                          thread=1, seed=seed, verbose=0)
        for key, lines in held.items():
            counts[f"{key}_mean_score"] = float(np.mean([_score(model, line) for line in lines]))
    finally:
        os.remove(train_file)
    model.save_model(out_path)
    return counts


@lru_cache(maxsize=4)
def _model(path: str):
    import fasttext

    return fasttext.load_model(path)


def check_model(path: str) -> None:
    """A fastText model whose labels are train-quality's two (a language-ID model, say, scores every page 0)."""
    from megagpt.errors import ConfigError

    try:
        labels = set(_model(path).get_labels())
    except ValueError as exc:  # fastText: "<path> has wrong file format!"
        raise ConfigError(f"quality.model={path!r} is not a fastText model ({exc})") from None
    if labels != {POSITIVE, NEGATIVE}:
        shown = ", ".join(sorted(labels)[:4]) + (", ..." if len(labels) > 4 else "")
        raise ConfigError(f"quality.model={path!r} labels texts {shown}, not {POSITIVE} and {NEGATIVE}: "
                          f"not a classifier from `megagpt corpus train-quality`")


def quality_score(model_path: str, text: str) -> float:
    """P(curated) under the classifier."""
    return _score(_model(model_path), _line(text))


def _score(model, line: str) -> float:
    # model.f.predict: fastText 0.9.3's Python predict() breaks under NumPy 2.
    for prob, label in model.f.predict(line, 2, 0.0, "strict"):
        if label == POSITIVE:
            return min(float(prob), 1.0)
    return 0.0


def pareto_keep(doc_id: str, score: float, alpha: float, seed: int = 0) -> bool:
    digest = hashlib.sha256(f"{seed}/{doc_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return bool(rng.pareto(alpha) > 1.0 - score)


def pareto_keep_probability(score: float, alpha: float) -> float:
    return (2.0 - score) ** -alpha
