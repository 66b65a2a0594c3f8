"""In-context task files: a YAML file saying how to prompt, over JSONL records.

    type: multiple_choice          # completion | multiple_choice | generation
    train: capitals.train.jsonl    # where the shots come from (paths relative to the YAML file)
    test: capitals.test.jsonl      # what is scored
    prompt: "Q: What is the capital of {country}?\nA:"   # a record's fields by name
    description: "Answer with a city."                     # optional, before the shots (GPT-3's task description)
    separator: "\n\n"              # between shots and the question (default two newlines)
    answer_prefix: " "             # before every answer, shot or scored (default a space)
    max_new_tokens: 16             # generation only (default 32)
    stop: "\n"                     # generation only: where an answer ends (default a newline)

Records per type (besides the prompt's fields):
    completion       {"target": str}                      the words to predict (LAMBADA: the last word)
    multiple_choice  {"choices": [str, ...], "label": int} the options and the right one's index
    generation       {"answers": [str, ...]}              acceptable answers (the first one in shots)

A record that breaks these rules stops the evaluation with its file and line.
"""

from __future__ import annotations

import json
import os
import re
import string
from dataclasses import dataclass, field
from typing import Optional

import yaml

from megagpt.config import load_yaml, shipped_config
from megagpt.errors import ConfigError, DataError
from megagpt.files import check_utf8, jsonl_lines

TYPES = ("completion", "multiple_choice", "generation")


@dataclass
class Task:
    name: str
    type: str
    prompt: str
    train: list[dict]
    test: list[dict]
    path: str
    description: str = ""
    separator: str = "\n\n"
    answer_prefix: str = " "
    max_new_tokens: int = 32
    stop: str = "\n"
    where: dict = field(default_factory=dict)  # id(record) -> "file:line", for messages

    def question(self, record: dict) -> str:
        return self.prompt.format(**record)

    def gold(self, record: dict) -> str:
        """The answer a shot shows: the target, the right choice, or the first acceptable answer."""
        if self.type == "completion":
            return record["target"]
        if self.type == "multiple_choice":
            return record["choices"][record["label"]]
        return record["answers"][0]


def load_task(path: str) -> Task:
    path = shipped_config(path)
    try:
        with open(path, encoding="utf-8") as f:
            spec = load_yaml(f)  # as configs are read: 010 is ten, a key given twice an error
    except FileNotFoundError:
        raise ConfigError(f"--task {path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--task {path}: not valid YAML ({exc})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"--task {path}: expected a mapping of settings (type, train, test, prompt, ...)")
    known = {"type", "train", "test", "prompt", "description", "separator", "answer_prefix", "max_new_tokens", "stop",
             "name"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"--task {path}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    for key in ("type", "test", "prompt"):
        if spec.get(key) is None:
            raise ConfigError(f"--task {path}: '{key}' is missing")
    for key in ("stop", "answer_prefix", "separator"):
        if key in spec and spec[key] is None:
            spec[key] = ""  # left empty, as `answer_prefix:` reads: no text (for stop: nothing but the length)
    for key, value in spec.items():  # YAML reads `separator: 7` as a number, which would fail in a rank later
        if value is None and key in ("name", "train", "description"):
            continue  # optional, and None is their unset
        whole = key == "max_new_tokens"
        if isinstance(value, bool) or not isinstance(value, int if whole else str) or whole and value < 1:
            raise ConfigError(f"--task {path}: {key}={value!r} must be {'a whole number >= 1' if whole else 'text'}")
    if spec["type"] not in TYPES:
        raise ConfigError(f"--task {path}: type {spec['type']!r} must be one of {', '.join(TYPES)}")
    base = os.path.dirname(os.path.abspath(path))
    where: dict = {}
    task = Task(name=spec.get("name") or os.path.splitext(os.path.basename(path))[0], type=spec["type"],
                prompt=spec["prompt"], train=[], test=[], path=path, where=where,
                **{k: spec[k] for k in ("description", "separator", "answer_prefix", "max_new_tokens", "stop")
                   if k in spec})
    fields = _template_fields(task.prompt, path)
    task.test = _read_records(os.path.join(base, spec["test"]), task, fields, where)
    if spec.get("train"):
        task.train = _read_records(os.path.join(base, spec["train"]), task, fields, where)
    if not task.test:
        raise DataError(f"{os.path.join(base, spec['test'])}: no records to evaluate")
    return task


def _template_fields(template: str, path: str) -> set[str]:
    try:
        # the record's key: `{country.name}` and `{choices[0]}` read the fields country and choices
        names = {re.split(r"[.\[]", name)[0] for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"--task {path}: prompt is not a valid template ({exc}); write literal braces as {{{{ }}}}") \
            from None
    if "" in names or any(n.isdigit() for n in names):
        raise ConfigError(f"--task {path}: prompt fields must be named, like {{question}}")
    return names


def _read_records(path: str, task: Task, fields: set[str], where: dict) -> list[dict]:
    records = []
    if not os.path.isfile(path):
        raise ConfigError(f"{task.path}: data file {path} not found")
    for lineno, line in jsonl_lines(path):
        at = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{at}: not JSON ({exc.msg})") from None
        problem = _check(record, task.type, fields)
        if problem:
            raise DataError(f"{at}: {problem}")
        try:  # a format spec or attribute the values do not have ({n:d} over text) failed in a rank
            task.question(record)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise DataError(f"{at}: the prompt cannot be filled from this record ({type(exc).__name__}: {exc})") \
                from None
        where[id(record)] = at
        records.append(record)
    return records


def _check(record, kind: str, fields: set[str]) -> Optional[str]:
    if not isinstance(record, dict):
        return "a record must be a JSON object"
    try:
        check_utf8(record)
    except ValueError as exc:
        return str(exc)
    missing = sorted(f for f in fields if f not in record)
    if missing:
        return f"the prompt's field(s) {', '.join(missing)} are missing"
    if kind == "completion" and not (isinstance(record.get("target"), str) and record["target"].strip()):
        return "a completion record needs a non-empty string 'target'"
    if kind == "multiple_choice":
        choices, label = record.get("choices"), record.get("label")
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
            return "a multiple_choice record needs 'choices': two or more non-empty strings"
        if not (isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(choices)):
            return f"'label' must be the index of the right choice (0..{len(choices) - 1}), got {label!r}"
    if kind == "generation":
        answers = record.get("answers")
        if not (isinstance(answers, list) and answers and all(isinstance(a, str) and a.strip() for a in answers)):
            return "a generation record needs 'answers': one or more non-empty strings"
    return None
