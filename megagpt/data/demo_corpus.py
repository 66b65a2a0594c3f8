"""The embedded default corpus: the docstrings of Python's own standard library.

Real English technical prose that every machine with Python has, so the demo and the
tests need no download. Each module, class and function docstring is one document;
order is fixed (sorted paths) so every machine builds the same corpus.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from typing import Iterator


def stdlib_docstrings(min_chars: int = 200) -> Iterator[str]:
    root = sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "test", "tests", "idlelib", "__pycache__"))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # a few stdlib files are deliberately not valid Python 3
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= min_chars:
                        yield doc


def build_demo_shard(out_dir: str, vocab_size: int) -> str:
    """Train a BPE on the stdlib docstrings and write them as one shard; returns its prefix.

    Reuses an existing shard, so repeated demos and tests pay for this once.
    """
    from megagpt.data.shards import write_shard
    from megagpt.data.tokenizer import Tokenizer

    prefix = os.path.join(os.path.abspath(out_dir), f"stdlib-docstrings-v{vocab_size}")
    tokenizer_path = prefix + ".tokenizer.json"
    if all(os.path.isfile(prefix + ext) for ext in (".bin", ".idx", ".tokenizer.json")):
        return prefix
    docs = list(stdlib_docstrings())
    tokenizer = Tokenizer.train(docs, vocab_size)
    os.makedirs(out_dir, exist_ok=True)
    write_shard(prefix, docs, tokenizer)
    tokenizer.save(tokenizer_path + ".tmp")
    os.replace(tokenizer_path + ".tmp", tokenizer_path)
    return prefix
