"""What every VLM provider shares: results, counters, chat messages, and validate-and-retry for batches.

The request (system prompt + image as a data URL + instructions) is built once here in the OpenAI chat
format, which both the HTTP provider and vLLM's ``LLM.chat`` accept; replies go through
:func:`relightflow.captions.schema.parse_description` everywhere.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from relightflow.captions.schema import (
    SYSTEM_PROMPT,
    USER_PROMPT,
    InvalidResponse,
    LightingDescription,
    json_schema,
    parse_description,
)


@dataclass
class CaptionResult:
    """One image's outcome: a validated description, or the reason it failed (never both)."""

    description: LightingDescription | None = None
    raw: str = ""
    error: str = ""
    attempts: int = 0
    request_failed: bool = False  # no valid HTTP answer after the retries (the service's fault, not the image's)

    @property
    def ok(self) -> bool:
        return self.description is not None


@dataclass
class Counters:
    """Thread-safe request / retry / failure counts of a provider (reported in the stage stats)."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "retries": self.retries, "failures": self.failures}


class Captioner(Protocol):
    """A VLM backend: describes a batch of RGB images."""

    name: str
    model: str
    endpoint: str  # the URL requests go to, without credentials ("" for a local model)
    counters: Counters

    def params(self) -> dict[str, Any]:
        """Generation parameters that shape the reply (part of the cache key)."""
        ...

    def describe(self, images: Sequence[np.ndarray]) -> list[CaptionResult]: ...

    def close(self) -> None: ...


JPEG_QUALITY = 90
IMAGE_ENCODING = f"jpeg-q{JPEG_QUALITY}"  # how images travel in chat messages (part of the cache key)


def image_data_url(image: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    """A ``data:image/jpeg;base64,…`` URL of an RGB uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_messages(image: np.ndarray) -> list[dict[str, Any]]:
    """OpenAI-format chat messages asking for the lighting description of one image."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_data_url(image)}},
            {"type": "text", "text": USER_PROMPT},
        ]},
    ]  # fmt: skip


def response_format(structured: str) -> dict[str, Any] | None:
    """The ``response_format`` of a chat-completions request: ``json_schema``, ``json_object`` or none."""
    if structured == "json_schema":
        return {"type": "json_schema",
                "json_schema": {"name": "lighting_description", "schema": json_schema(), "strict": True}}  # fmt: skip
    if structured == "json_object":
        return {"type": "json_object"}
    if structured in ("none", "", None):
        return None
    raise ValueError(f"structured must be json_schema, json_object or none, got {structured!r}")


def generate_validated(
    generate: Callable[[list[int]], list[str]], n: int, max_retries: int, counters: Counters
) -> list[CaptionResult]:
    """Run ``generate`` on item indices; re-ask only the items whose reply fails validation.

    ``generate(indices)`` returns one reply text per index (a batched local model call). After
    ``max_retries`` extra rounds, still-invalid items become failures with the last reason.
    """
    results = [CaptionResult() for _ in range(n)]
    pending = list(range(n))
    for round_ in range(max_retries + 1):
        if not pending:
            break
        if round_:
            counters.add("retries", len(pending))
        counters.add("requests", len(pending))
        texts = generate(pending)
        still = []
        for i, text in zip(pending, texts, strict=True):
            results[i].attempts += 1
            results[i].raw = text
            try:
                results[i].description = parse_description(text)
                results[i].error = ""
            except InvalidResponse as e:
                results[i].error = f"invalid response: {e}"
                still.append(i)
        pending = still
    counters.add("failures", len(pending))
    return results
