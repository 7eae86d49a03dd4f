"""Content-keyed response cache: a rerun never pays twice for the same caption.

A key hashes everything that changes the answer (:data:`KEY_FIELDS`): the image file's bytes, the size it
is sent at, the provider, model and endpoint, the prompt version with the prompt's fingerprint, and the
generation parameters with the seed. Never a credential: endpoints are keyed without their user info.
The value is the validated description (JSON) with its raw reply. One small file per key under
``<cache_dir>/captions/<2 hex>/<key>.json``, written atomically, so parallel shard jobs and killed jobs
never corrupt it. Only validated answers are stored; failures are retried on the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relightflow.manifest import write_json

log = logging.getLogger(__name__)


KEY_FIELDS = ("digest", "image_size", "provider", "model", "endpoint", "prompt", "params")


def cache_key(fields: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of the :data:`KEY_FIELDS` (all required, nothing else)."""
    missing, extra = set(KEY_FIELDS) - set(fields), set(fields) - set(KEY_FIELDS)
    if missing or extra:
        raise ValueError(f"cache key fields: missing {sorted(missing)}, unexpected {sorted(extra)}")
    blob = json.dumps({k: fields[k] for k in KEY_FIELDS}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CaptionCache:
    """Get / put validated caption responses by key, counting hits and misses."""

    def __init__(self, cache_dir: str | os.PathLike, enabled: bool = True):
        self.root = Path(cache_dir) / "captions"
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached value, or None (a miss; an unreadable entry counts as a miss)."""
        value = None
        if self.enabled and self._path(key).exists():
            try:
                value = json.loads(self._path(key).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                log.warning("ignoring unreadable cache entry %s: %s", key, e)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        if self.enabled:
            write_json(self._path(key), value)

    def stats(self) -> dict[str, int]:
        return {"cache_hits": self.hits, "cache_misses": self.misses}
