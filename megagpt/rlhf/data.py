"""The JSONL files of the InstructGPT stage, and the tokenizer each stage inherits.

    demonstrations   {"prompt": str, "response": str}                       SFT; the reward shift
    comparisons      {"prompt": str, "responses": [best, ..., worst]}      reward model, K = 2..9
    prompts          {"prompt": str}                                        PPO rollouts

A file with malformed lines fails as a whole, naming how many and where: a half-read
file would silently train on a different dataset than the user wrote.
"""

from __future__ import annotations

import functools
import json
import os
import random
from typing import Callable, Optional

from megagpt.errors import ConfigError, DataError
from megagpt.files import check_utf8, jsonl_lines

MAX_RESPONSES = 9  # InstructGPT ranked K = 4..9 responses per prompt


def read_records(path: str, parse: Callable[[dict], object], what: str) -> list:
    """parse(row) of every non-blank line (the file gzip or not, by its bytes); parse raises ValueError(reason) for a
    malformed row."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    records, bad = [], []
    for lineno, line in jsonl_lines(path):
        try:
            row = json.loads(line)
        except ValueError:
            bad.append(f"line {lineno}: not JSON")
            continue
        try:
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            check_utf8(row)
            records.append(parse(row))
        except ValueError as exc:
            bad.append(f"line {lineno}: {exc}")
    if bad:
        raise DataError(f"{path}: {len(bad)} malformed line{'s' if len(bad) > 1 else ''} "
                        f"({'; '.join(bad[:5])}{'; ...' if len(bad) > 5 else ''})")
    if not records:
        raise DataError(f"{path}: no {what}")
    return records


def _text(row: dict, key: str) -> str:
    if not isinstance(row.get(key), str):
        raise ValueError(f'needs a string field "{key}"')
    return row[key]


def demonstration(row: dict) -> tuple[str, str]:
    prompt, response = _text(row, "prompt"), _text(row, "response")
    if not response.strip():
        raise ValueError("the response is empty (nothing to learn from)")
    return prompt, response


def comparison(row: dict) -> tuple[str, list[str]]:
    responses = row.get("responses")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise ValueError('needs "responses": a list of strings, best first')
    if not 2 <= len(responses) <= MAX_RESPONSES:
        raise ValueError(f"has {len(responses)} responses; a comparison ranks 2 to {MAX_RESPONSES}")
    if len(set(responses)) < len(responses):
        raise ValueError("ranks the same response twice")
    return _text(row, "prompt"), responses


def prompt(row: dict) -> str:
    return _text(row, "prompt")


def read_demonstrations(path: str) -> list[tuple[str, str]]:
    return read_records(path, demonstration, "demonstrations")


def read_comparisons(path: str) -> list[tuple[str, list[str]]]:
    return read_records(path, comparison, "comparisons")


def read_prompts(path: str) -> list[str]:
    return read_records(path, prompt, "prompts")


def split(items: list, valid_fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): a seeded share of the items held out."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_valid = int(round(len(items) * valid_fraction))
    return [items[i] for i in order[n_valid:]], [items[i] for i in order[:n_valid]]


def epoch_item(items: list, index: int, seed: int):
    """Sample `index` of an endless stream over the items, reshuffled with a seed every epoch (as
    megatron-core's GPTDataset orders documents): the same sample at every layout."""
    epoch, position = divmod(index, len(items))
    return items[_epoch_order(len(items), seed, epoch)[position]]


@functools.lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    # Shuffled once per epoch, not once per sample: samples are read one index at a time, and a shuffle per
    # read made an epoch of InstructGPT's 33k comparisons cost 33k shuffles of 33k items.
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


# ---------------------------------------------------------------- tokenizers


def checkpoint_tokenizer(checkpoint: str, override: Optional[str] = None) -> str:
    """The tokenizer.json a checkpoint's model reads: `override`, else its run dir's, else its training data's; one
    with more tokens than the model is refused (its ids past the embeddings crashed every rank)."""
    from megagpt.data.tokenizer import Tokenizer
    from megagpt.generation import checkpoint_config, find_generation_tokenizer

    if override is not None and not os.path.isfile(override):
        raise DataError(f"tokenizer {override}: file not found")
    path, cfg = checkpoint_config(checkpoint)
    found = override or find_generation_tokenizer(path, cfg)
    if found is None:
        raise DataError(f"no tokenizer.json beside the training data or in the run dir of {path}; name one")
    size = Tokenizer.load(found).vocab_size
    if size > cfg.model.vocab_size:
        raise ConfigError(f"tokenizer {found} has {size} tokens but checkpoint {path} has model.vocab_size="
                          f"{cfg.model.vocab_size}: its ids past the model's embeddings cannot be read")
    return found
