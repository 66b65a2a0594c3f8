"""What a file holds, as hashes: the whole of it, or (cheaply, for large inputs) its size and edges."""

from __future__ import annotations

import hashlib
import os

EDGE_BYTES = 1 << 20


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def edges_fingerprint(path: str) -> dict:
    """Size and a hash of the first and last MiB: catches a replaced or rewritten file without reading all of it."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            digest.update(f.read())
    return {"size": size, "edges_sha256": digest.hexdigest()}
