"""Content digests for cache keys: what changes the answer must change the key.

A model given as a local file or folder is identified by the SHA-256 of its bytes (so replacing a
checkpoint under the same name invalidates cached masks and captions); a hub id by its name and
revision. Hashing a multi-GB checkpoint takes seconds, so digests are memoised per process, keyed by
(path, size, mtime).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


@functools.cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (memoised by path, size and mtime)."""
    st = os.stat(path)
    return _file_digest(os.path.realpath(path), st.st_size, st.st_mtime_ns)


def folder_digest(folder: str | os.PathLike) -> str:
    """SHA-256 over every file of a folder (relative names and contents), in sorted order."""
    root = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(file_digest(path).encode())
    return h.hexdigest()


def model_identity(ref: str | os.PathLike | None, revision: str | None = None) -> str:
    """``file:<sha>``, ``dir:<sha>`` for a local checkpoint, else ``hub:<id>@<revision>`` (or ``none``)."""
    if not ref:
        return "none"
    path = Path(ref)
    if path.is_file():
        return f"file:{file_digest(path)}"
    if path.is_dir():
        return f"dir:{folder_digest(path)}"
    return f"hub:{ref}@{revision or 'main'}"


def json_digest(obj: Any) -> str:
    """SHA-256 of a JSON-able object in canonical form."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
