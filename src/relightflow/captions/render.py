"""Instruction text from lighting attributes: decide direction and colour temperature, clean the VLM's words,
fill a template, sanitise.

**Deciding.** A VLM names the light source, setting, direction and colour temperature; the pixels are measured
too (:func:`relightflow.captions.measure.measure_lighting`, with per-attribute confidences). Modes (config
``captions.attributes``):

* ``complement`` (default) — a confident measurement wins over the VLM (VLMs confuse left and right); a
  direction the measurement is unsure of is left OUT of the instruction rather than guessed; an unsure
  measured colour temperature leaves the VLM's;
* ``override`` — as ``complement`` for the direction, and the measured colour temperature always wins;
* ``check`` — the VLM's direction and temperature are kept; the agreement is only recorded.

Every row records the agreement of the VLM with the measurement and where the final words came from.

**Never contradict.** The direction and temperature appear in the instruction only through the decided
values: direction words are removed from the VLM's source and setting, and so are explicit temperature
words (``{temperature}`` says it) and words that imply another temperature ("sunset" under a cool light);
the VLM's ``{phrase}`` keeps its own direction words only when they agree. :func:`mentions` then tells
which attributes the rendered instruction carries, so the ``light_direction`` / ``color_temperature``
columns written beside it are exactly what it asks for (empty when it asks nothing).

**Templates.** Fields: ``{light}`` (the source: the VLM's, or "daylight" / "lamp light" / "orange light"
measured), ``{direction}`` (a noun for "from the …": left, upper right, top, bottom, front, back; empty
when unsure), ``{temperature}`` (warm / neutral / cool), ``{hardness}`` (soft / hard; empty for medium),
``{setting}`` (the VLM's, e.g. "city street at night"), ``{key}`` and ``{phrase}`` (the VLM's own
instruction). Text in ``[ ]`` is kept only when every field inside it is non-empty, e.g.
``[ from the {direction}]``; outside brackets a dangling "from the" is dropped.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from typing import Any

MODES = ("override", "complement", "check")
VLM_TEMPLATE = "{temperature} {light}[ from the {direction}][, {setting}]"
MEASURED_TEMPLATE = "{hardness} {temperature} {light}[ from the {direction}]"
LEGACY_TEMPLATE = "{light} from the {direction}, {temperature} tone"  # the default before prompt v2
DEFAULT_TEMPLATE = VLM_TEMPLATE
MIN_CONFIDENCE = 0.5  # a measured attribute at least this confident is trusted
_FIELDS = ("light", "direction", "temperature", "hardness", "setting", "key", "phrase")
_VLM_NOUN = {"left": "left", "right": "right", "above": "top", "below": "bottom", "front": "front", "back": "back"}
_VERTICAL_PREFIX = {"above": "upper", "below": "lower"}

# Direction words, with the axis they name (the vocabulary relightflow.evaluate.instruction parses)
DIRECTION_WORDS = {
    "left": ("h", "left"), "right": ("h", "right"), "side": ("h", "*"), "sides": ("h", "*"),
    "above": ("v", "above"), "top": ("v", "above"), "upper": ("v", "above"), "overhead": ("v", "above"),
    "below": ("v", "below"), "bottom": ("v", "below"), "under": ("v", "below"), "underneath": ("v", "below"),
    "beneath": ("v", "below"), "lower": ("v", "below"),
    "back": ("b", "back"), "behind": ("b", "back"), "rim": ("b", "back"), "backlit": ("b", "back"),
    "backlight": ("b", "back"), "backlighting": ("b", "back"), "front": ("f", "front"), "frontal": ("f", "front"),
}  # fmt: skip
TEMPERATURE_WORDS = {"warm": "warm", "warmer": "warm", "cool": "cool", "cooler": "cool", "cold": "cool",
                     "neutral": "neutral"}  # fmt: skip
IMPLIED_TEMPERATURE = {
    "golden hour": "warm", "blue hour": "cool", "golden": "warm", "amber": "warm", "orange": "warm", "sunset": "warm", "sunrise": "warm", "tungsten": "warm",
    "incandescent": "warm", "candle": "warm", "candles": "warm", "candlelight": "warm", "candlelit": "warm",
    "fire": "warm", "firelight": "warm", "fireplace": "warm",
    "blue": "cool", "bluish": "cool", "icy": "cool", "moonlight": "cool", "moonlit": "cool",
}  # fmt: skip
_SIDE = r"(?:(?:upper|lower|top|bottom|far)[\s-]+)?(?:left|right)|top|bottom|above|below|behind|back|front|sides?|overhead"
_DIRECTION_PATTERNS = [
    # "lamp above the desk", "from behind her"
    r"\b(?:from\s+)?(?:above|below|behind|under|beneath|underneath)\s+(?:(?:the|a|an|its|his|her|their)\s+)?"
    r"[a-z]+\b",
    # "coming from the upper left side", "on the right", "from behind"
    rf"\b(?:(?:coming|falling|shining|streaming)\s+)?(?:from|on|at|to|toward|towards|in)\s+(?:the\s+)?"
    rf"(?:{_SIDE})(?:[\s-]+(?:hand[\s-]+)?sides?)?\b",
    # "side lighting", "backlight", "rim light", "left window"
    r"\b(?:left|right|side|top|back|rim|overhead|front|bottom|under)[\s-]*(?=(?:light|lighting|lit|lamp|window|"
    r"illumination|glow)\b)",
    r"\b(?:" + "|".join(sorted(DIRECTION_WORDS, key=len, reverse=True)) + r")\b",
]
_DIRECTION_RE = [re.compile(p, re.IGNORECASE) for p in _DIRECTION_PATTERNS]
_CONNECTOR = r"(?:and|or|with|through|from|of|by|in|on|at|to|the|a|an|into|onto)"
_BRACKET_RE = re.compile(r"\[([^\[\]]*)\]")
_DANGLING_RE = re.compile(r"\b(?:from|on|at) the\s*(?=$|[,;.])", re.IGNORECASE)


class TemplateError(ValueError):
    """A template that names an unknown field."""


def check_template(template: str) -> None:
    """Raise :class:`TemplateError` when the template uses a field that is not rendered."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = names - set(_FIELDS)
    if unknown:
        raise TemplateError(f"unknown template field(s) {sorted(unknown)}; known: {list(_FIELDS)}")


def template_for(provider: str, template: str | None) -> str:
    """The configured template, or the default of the provider (``measured`` or a VLM) when None."""
    if template:
        return template
    return MEASURED_TEMPLATE if provider == "measured" else VLM_TEMPLATE


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


# ---------------------------------------------------------------- words: what a text says about the light


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", str(text).lower())


def direction_terms(text: str) -> set[tuple[str, str]]:
    """The (axis, value) pairs a text names: ``h`` left/right (``*`` = a side), ``v`` above/below, ``b``, ``f``."""
    return {DIRECTION_WORDS[w] for w in _words(text) if w in DIRECTION_WORDS}


def temperature_terms(text: str) -> set[str]:
    """The colour temperatures a text names explicitly (warm / neutral / cool)."""
    return {TEMPERATURE_WORDS[w] for w in _words(text) if w in TEMPERATURE_WORDS}


def mentions(text: str) -> dict[str, bool]:
    """Whether a text names a light direction and a colour temperature."""
    return {"direction": bool(direction_terms(text)), "temperature": bool(temperature_terms(text))}


def direction_axes(noun: str) -> dict[str, str]:
    """``{"h": "left", "v": "above"}`` for "upper left", ``{"b": "back"}`` for "back"; {} for ""."""
    axes: dict[str, str] = {}
    for axis, value in direction_terms(noun):
        axes[axis] = value
    return axes


def agrees_with_direction(text: str, noun: str) -> bool:
    """True when every direction word of ``text`` is consistent with the direction ``noun`` ("" allows none)."""
    final = direction_axes(noun)
    for axis, value in direction_terms(text):
        if axis not in final or (value != "*" and final[axis] != value):
            return False
    return True


def _tidy(text: str) -> str:
    """Collapse spaces and drop connectors left dangling at the ends of comma-separated parts."""
    parts = []
    for part in re.split(r"\s*[,;]\s*", re.sub(r"\s+", " ", text)):
        part = re.sub(r"(?<!\w)-+|-+(?!\w)", " ", part).strip()
        for _ in range(3):
            part = re.sub(rf"^(?:{_CONNECTOR}\b\s*)+", "", part, flags=re.IGNORECASE)
            part = re.sub(rf"(?:\s*\b{_CONNECTOR})+$", "", part, flags=re.IGNORECASE).strip()
        if part:
            parts.append(part)
    return ", ".join(parts)


def scrub_direction(text: str) -> str:
    """The text without any direction expression ("from the left", "overhead", "lamp above the desk")."""
    for pattern in _DIRECTION_RE:
        text = pattern.sub(" ", text)
    return _tidy(text)


def scrub_temperature(text: str, temperature: str, keep_agreeing: bool = False) -> str:
    """Drop explicit temperature words (all, or with ``keep_agreeing`` those other than ``temperature``) and
    words implying another temperature ("sunset" when the light is cool)."""

    def keep(match: re.Match) -> str:
        word = " ".join(match.group("word").lower().split())
        if word in TEMPERATURE_WORDS:
            kept = keep_agreeing and TEMPERATURE_WORDS[word] == temperature
        else:
            kept = IMPLIED_TEMPERATURE[word] == temperature
        if kept:
            return match.group(0)
        return " " + (match.group("post") or "") if match.group("pre") else " "  # one "and" goes with it

    names = sorted({*TEMPERATURE_WORDS, *IMPLIED_TEMPERATURE}, key=len, reverse=True)
    words = "|".join(name.replace(" ", r"\s+") for name in names)
    pattern = rf"(?P<pre>\s+(?:and|or)\s+)?\b(?P<word>{words})\b(?P<post>\s+(?:and|or)\b)?"
    return _tidy(re.sub(pattern, keep, text, flags=re.IGNORECASE))


def clean_vlm_text(text: str, direction: str, temperature: str, own_direction: bool = False) -> str:
    """A VLM's free text made consistent with the decided direction and temperature.

    Source and setting lose every direction and explicit temperature word (the template adds them);
    with ``own_direction`` (the VLM's phrase) direction words that agree with ``direction`` are kept.
    """
    text = sanitize_instruction(text, 10_000)
    if not (own_direction and agrees_with_direction(text, direction)):
        text = scrub_direction(text)
    return scrub_temperature(text, temperature, keep_agreeing=own_direction)


# ---------------------------------------------------------------- deciding direction and temperature


def measured_direction_noun(measured: dict[str, Any]) -> str:
    """ "upper left", "left", "top", "back", … from measured horizontal / vertical / back light."""
    if measured.get("backlit"):
        return "back"
    h, v = measured["horizontal"], measured["vertical"]
    if h in ("left", "right"):
        return f"{_VERTICAL_PREFIX[v]} {h}" if v in _VERTICAL_PREFIX else h
    return _VLM_NOUN.get(v, "front") if v != "level" else "front"


def confident_direction(measured: dict[str, Any], min_confidence: float = MIN_CONFIDENCE) -> str:
    """The measured direction noun with only its confident parts; "" when no part is.

    Uses ``horizontal_confidence`` / ``vertical_confidence`` when the measurement gives them, else
    ``direction_confidence`` for both axes. Back light (a subject darker than its surround) counts as sure.
    """
    if measured.get("backlit"):
        return "back"
    overall = float(measured.get("direction_confidence") or 0.0)
    h_conf = float(measured.get("horizontal_confidence", overall) or 0.0)
    v_conf = float(measured.get("vertical_confidence", overall) or 0.0)
    h = measured["horizontal"] if measured["horizontal"] in ("left", "right") and h_conf >= min_confidence else ""
    v = measured["vertical"] if measured["vertical"] in _VERTICAL_PREFIX and v_conf >= min_confidence else ""
    if h:
        return f"{_VERTICAL_PREFIX[v]} {h}" if v else h
    return _VLM_NOUN[v] if v else ""


def direction_agrees(vlm_direction: str, measured: dict[str, Any]) -> bool:
    """Whether a VLM direction word is consistent with the measured direction."""
    if vlm_direction == "back":
        return bool(measured.get("backlit"))
    if vlm_direction in ("left", "right"):
        return measured["horizontal"] == vlm_direction
    if vlm_direction in ("above", "below"):
        return measured["vertical"] == vlm_direction
    return measured["horizontal"] == "front" and not measured.get("backlit")


@dataclass(frozen=True)
class Decision:
    """The direction noun ("" = left out) and temperature an instruction states, and where each came from."""

    direction: str
    temperature: str
    direction_source: str  # measured | vlm | none
    temperature_source: str  # measured | vlm


def decide(vlm: dict[str, Any] | None, measured: dict[str, Any], mode: str,
           min_confidence: float = MIN_CONFIDENCE) -> Decision:  # fmt: skip
    """Direction and temperature of the instruction (see the module docstring); ``vlm`` None: measured only."""
    if mode not in MODES:
        raise ValueError(f"captions.attributes must be one of {MODES}, got {mode!r}")
    sure_direction = confident_direction(measured, min_confidence)
    if vlm is not None and mode == "check":
        return Decision(_VLM_NOUN[vlm["direction"]], vlm["color_temperature"], "vlm", "vlm")
    direction = (sure_direction, "measured" if sure_direction else "none")
    sure_temperature = float(measured.get("color_confidence") or 0.0) >= min_confidence
    if vlm is None or mode == "override" or sure_temperature:
        temperature = (measured["color_temperature"], "measured")
    else:
        temperature = (vlm["color_temperature"], "vlm")
    return Decision(direction[0], temperature[0], direction[1], temperature[1])


# ---------------------------------------------------------------- fields


def measured_source(measured: dict[str, Any]) -> str:
    """The light source named from measured attributes: "daylight", "lamp light" or e.g. "orange light"."""
    if measured.get("light_type") == "colored":
        return f"{measured['light_color']} light"
    return "lamp light" if measured.get("light_type") == "artificial" else "daylight"


def measured_light(measured: dict[str, Any]) -> str:
    """A short light noun phrase from measured attributes, e.g. "soft daylight", "hard orange light"."""
    adjective = {"soft": "soft", "hard": "hard"}.get(measured.get("hardness", ""), "")
    return f"{adjective} {measured_source(measured)}".strip()


def measured_fields(measured: dict[str, Any], min_confidence: float = MIN_CONFIDENCE) -> dict[str, str]:
    """Template fields from measured attributes alone (the ``measured`` provider)."""
    decision = decide(None, measured, "override", min_confidence)
    return {
        "light": scrub_temperature(measured_source(measured), decision.temperature) or "light",
        "direction": decision.direction, "temperature": decision.temperature,
        "hardness": {"soft": "soft", "hard": "hard"}.get(measured.get("hardness", ""), ""),
        "setting": "", "key": measured.get("key", ""), "phrase": "",
    }  # fmt: skip


def combine(vlm: dict[str, Any], measured: dict[str, Any], mode: str,
            min_confidence: float = MIN_CONFIDENCE) -> tuple[dict[str, str], dict[str, Any]]:  # fmt: skip
    """Template fields from a VLM description and measured attributes, plus the per-row record.

    The record holds the VLM-vs-measurement agreement (``agreement_direction``, ``agreement_temperature``,
    their mean ``agreement``) and where the final words came from (``direction_source``,
    ``temperature_source``).
    """
    decision = decide(vlm, measured, mode, min_confidence)
    d, t = decision.direction, decision.temperature
    light = clean_vlm_text(vlm["light_source"], d, t) or "light"
    fields = {
        "light": light, "direction": d, "temperature": t, "hardness": vlm["hardness"],
        "setting": clean_vlm_text(vlm["setting"], d, t), "key": measured.get("key", ""),
        "phrase": clean_vlm_text(vlm["phrase"], d, t, own_direction=True),
    }  # fmt: skip
    agree_dir = direction_agrees(vlm["direction"], measured)
    agree_temp = vlm["color_temperature"] == measured["color_temperature"]
    record = {"agreement_direction": agree_dir, "agreement_temperature": agree_temp,
              "agreement": (int(agree_dir) + int(agree_temp)) / 2, "direction_source": decision.direction_source,
              "temperature_source": decision.temperature_source}  # fmt: skip
    return fields, record


def _drop_empty_optionals(template: str, values: dict[str, str]) -> str:
    """Keep the text of each ``[ … ]`` segment whose fields are all non-empty; drop the others."""

    def segment(match: re.Match) -> str:
        inner = match.group(1)
        names = [name for _, name, _, _ in string.Formatter().parse(inner) if name]
        return inner if all(values.get(name) for name in names) else ""

    return _BRACKET_RE.sub(segment, template)


def render_instruction(fields: dict[str, str], template: str = DEFAULT_TEMPLATE, max_chars: int = 200) -> str:
    """Fill the template (optional ``[ … ]`` segments, no dangling "from the") and sanitise the result."""
    check_template(template)
    values = {name: str(fields.get(name, "") or "").strip() for name in _FIELDS}
    text = _drop_empty_optionals(template, values).format(**values)
    text = _DANGLING_RE.sub("", re.sub(r"\s+", " ", text))
    return sanitize_instruction(text, max_chars)


def stated_attributes(instruction: str, fields: dict[str, str]) -> dict[str, str | None]:
    """The ``light_direction`` / ``color_temperature`` columns of an instruction: the decided values where the
    instruction names a direction / temperature, None where it names none."""
    said = mentions(instruction)
    return {
        "light_direction": fields["direction"] if said["direction"] and fields["direction"] else None,
        "color_temperature": fields["temperature"] if said["temperature"] else None,
    }
