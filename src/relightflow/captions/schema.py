"""The structured lighting description a VLM is asked for, its prompt, and strict parsing.

The model answers with one small JSON object; :func:`parse_description` extracts and validates it (a
reply that fails is an :class:`InvalidResponse`, retried then recorded as a failure — never stored as a
caption). :func:`prompt_fingerprint` (``PROMPT_VERSION``, the prompts and the schema) is part of the cache key,
so editing any of them re-captions; bump ``PROMPT_VERSION`` when the meaning changes without the text.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROMPT_VERSION = "v2"  # v2: free-text setting, source without direction/colour words
DIRECTIONS = ("left", "right", "above", "below", "front", "back")
TEMPERATURES = ("warm", "neutral", "cool")

SYSTEM_PROMPT = "You are a lighting director. You describe how a photo is lit, tersely and literally."
USER_PROMPT = (
    "Describe the main light in this photo as one JSON object with these keys:\n"
    '- "light_source": what makes the light and how it reaches the subject, 1-8 words, without its direction '
    'or colour temperature (e.g. "sunset light through window blinds", "overcast sky", "softbox", '
    '"desk lamp", "neon signs", "streetlights", "camera flash")\n'
    '- "direction": where the main light comes from, as seen by the viewer of the image: one of '
    '"left", "right", "above", "below", "front", "back"\n'
    '- "color_temperature": one of "warm", "neutral", "cool"\n'
    '- "hardness": "soft" (diffuse, gradual shadows) or "hard" (crisp shadows)\n'
    '- "setting": where the photo was taken, 1-4 words (e.g. "living room", "city street at night", '
    '"beach", "forest", "photo studio")\n'
    '- "phrase": 4-12 words naming the light as an edit instruction, e.g. '
    '"warm sunset light through window blinds from the left"\n'
    "Describe only what you see. Answer with the JSON object only."
)


class InvalidResponse(ValueError):
    """A model reply that is not a valid lighting description (the message says why)."""


class LightingDescription(BaseModel):
    """What the VLM says about the main light of an image."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    light_source: str = Field(min_length=1, max_length=60)
    direction: Literal["left", "right", "above", "below", "front", "back"]
    color_temperature: Literal["warm", "neutral", "cool"]
    hardness: Literal["soft", "hard"]
    setting: str = Field(min_length=1, max_length=40)
    phrase: str = Field(min_length=3, max_length=120)

    @field_validator("direction", "color_temperature", "hardness", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


def prompt_fingerprint() -> str:
    """Short hash of the prompts and schema: part of the cache key, so editing them re-captions."""
    blob = json.dumps([PROMPT_VERSION, SYSTEM_PROMPT, USER_PROMPT, json_schema()], sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def json_schema() -> dict[str, Any]:
    """JSON schema of :class:`LightingDescription` (for guided decoding / ``response_format``)."""
    schema = LightingDescription.model_json_schema()
    schema["additionalProperties"] = False
    return schema


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def _json_candidate(text: str) -> str:
    """The JSON object inside a reply: inside a code fence if any, else from the first ``{`` to the last ``}``."""
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise InvalidResponse("no JSON object in the reply")
    return text[start : end + 1]


def parse_description(text: str | None) -> LightingDescription:
    """Parse and validate a model reply; raise :class:`InvalidResponse` with a short reason."""
    if not text or not text.strip():
        raise InvalidResponse("empty reply")
    try:
        data = json.loads(_json_candidate(text))
    except json.JSONDecodeError as e:
        raise InvalidResponse(f"invalid JSON: {e.msg}") from e
    if not isinstance(data, dict):
        raise InvalidResponse("reply is not a JSON object")
    try:
        return LightingDescription.model_validate(data)
    except ValidationError as e:
        fields = ", ".join(sorted({".".join(map(str, err["loc"])) or "?" for err in e.errors()}))
        raise InvalidResponse(f"schema validation failed: {fields}") from e
