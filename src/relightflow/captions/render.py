"""Instruction text from lighting attributes: combine measured and VLM attributes, fill a template, sanitise.

Template fields: ``{light}`` (e.g. "soft daylight", or the VLM's light source), ``{direction}`` (a noun
for "from the …": left, right, upper left, top, bottom, front, back), ``{temperature}`` (warm / neutral /
cool), ``{hardness}``, ``{setting}``, ``{key}`` and ``{phrase}`` (the VLM's free phrase; empty when
measured). Modes (config ``captions.attributes``): ``override`` — the measured direction and colour
temperature replace the VLM's; ``complement`` — they replace them only where the measurement is
confident; ``check`` — the VLM's are kept and the agreement is only recorded.
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Any

MODES = ("override", "complement", "check")
DEFAULT_TEMPLATE = "{light} from the {direction}, {temperature} tone"
MIN_CONFIDENCE = 0.5  # complement mode: a measured attribute this confident replaces the VLM's
_DIRECTION_NOUN = {"left": "left", "right": "right", "above": "top", "below": "bottom", "front": "front",
                   "back": "back"}  # fmt: skip
_VERTICAL_PREFIX = {"above": "upper", "below": "lower"}
_FIELDS = ("light", "direction", "temperature", "hardness", "setting", "key", "phrase")


class TemplateError(ValueError):
    """A template that names an unknown field."""


def check_template(template: str) -> None:
    """Raise :class:`TemplateError` when the template uses a field that is not rendered."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = names - set(_FIELDS)
    if unknown:
        raise TemplateError(f"unknown template field(s) {sorted(unknown)}; known: {list(_FIELDS)}")


def sanitize_instruction(text: str, max_chars: int = 200) -> str:
    """Strip control/format characters, quotes and trailing punctuation; collapse spaces; cap at a word."""
    text = unicodedata.normalize("NFKC", str(text))
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    text = re.sub(r"\s+", " ", text).strip().strip("\"'`“”‘’").strip()
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    text = re.sub(r",(\s*,)+", ",", text).strip(" ,;:.")
    if len(text) > max_chars:
        cut = text[: max_chars + 1].rsplit(" ", 1)[0] if " " in text[:max_chars] else text[:max_chars]
        text = cut[:max_chars].rstrip(" ,;:.")
    return text


def measured_direction_noun(measured: dict[str, Any]) -> str:
    """ "upper left", "left", "top", "back", … from measured horizontal / vertical / back light."""
    if measured.get("backlit"):
        return "back"
    h, v = measured["horizontal"], measured["vertical"]
    if h in ("left", "right"):
        return f"{_VERTICAL_PREFIX[v]} {h}" if v in _VERTICAL_PREFIX else h
    return _DIRECTION_NOUN.get(v, "front") if v != "level" else "front"


def measured_light(measured: dict[str, Any]) -> str:
    """A short light noun phrase from measured attributes, e.g. "soft daylight", "hard orange light"."""
    if measured.get("light_type") == "colored":
        source = f"{measured['light_color']} light"
    elif measured.get("light_type") == "artificial":
        source = "lamp light"
    else:
        source = "daylight"
    adjective = {"soft": "soft", "hard": "hard"}.get(measured.get("hardness", ""), "")
    return f"{adjective} {source}".strip()


def measured_fields(measured: dict[str, Any]) -> dict[str, str]:
    """Template fields from measured attributes alone (the ``measured`` provider)."""
    return {
        "light": measured_light(measured), "direction": measured_direction_noun(measured),
        "temperature": measured["color_temperature"], "hardness": measured.get("hardness", ""),
        "setting": "", "key": measured.get("key", ""), "phrase": "",
    }  # fmt: skip


def direction_agrees(vlm_direction: str, measured: dict[str, Any]) -> bool:
    """Whether a VLM direction word is consistent with the measured direction."""
    if vlm_direction == "back":
        return bool(measured.get("backlit"))
    if vlm_direction in ("left", "right"):
        return measured["horizontal"] == vlm_direction
    if vlm_direction in ("above", "below"):
        return measured["vertical"] == vlm_direction
    return measured["horizontal"] == "front" and not measured.get("backlit")


def combine(
    vlm: dict[str, Any], measured: dict[str, Any], mode: str
) -> tuple[dict[str, str], dict[str, Any]]:
    """Template fields from a VLM description and measured attributes, plus the agreement record."""
    if mode not in MODES:
        raise ValueError(f"captions.attributes must be one of {MODES}, got {mode!r}")
    agree_dir = direction_agrees(vlm["direction"], measured)
    agree_temp = vlm["color_temperature"] == measured["color_temperature"]
    direction, temperature = _DIRECTION_NOUN[vlm["direction"]], vlm["color_temperature"]
    confident_dir = measured.get("direction_confidence", 0.0) >= MIN_CONFIDENCE
    confident_temp = measured.get("color_confidence", 0.0) >= MIN_CONFIDENCE
    if not agree_dir and (mode == "override" or (mode == "complement" and confident_dir)):
        direction = measured_direction_noun(measured)
    if not agree_temp and (mode == "override" or (mode == "complement" and confident_temp)):
        temperature = measured["color_temperature"]
    fields = {
        "light": vlm["light_source"], "direction": direction, "temperature": temperature,
        "hardness": vlm["hardness"], "setting": vlm["setting"], "key": measured.get("key", ""),
        "phrase": vlm["phrase"],
    }  # fmt: skip
    agreement = {"agreement_direction": agree_dir, "agreement_temperature": agree_temp,
                 "agreement": (int(agree_dir) + int(agree_temp)) / 2}  # fmt: skip
    return fields, agreement


def render_instruction(fields: dict[str, str], template: str = DEFAULT_TEMPLATE, max_chars: int = 200) -> str:
    """Fill the template and sanitise the result."""
    check_template(template)
    values = {name: str(fields.get(name, "") or "") for name in _FIELDS}
    return sanitize_instruction(template.format(**values), max_chars)
