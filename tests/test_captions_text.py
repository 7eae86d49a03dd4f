"""Structured replies, instruction rendering and sanitising, deciding direction / temperature (never
contradicting the columns), the response cache key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from relightflow.captions.cache import KEY_FIELDS, CaptionCache, cache_key
from relightflow.captions.render import (
    IMPLIED_TEMPERATURE,
    LEGACY_TEMPLATE,
    MEASURED_TEMPLATE,
    MIN_CONFIDENCE,
    MODES,
    VLM_TEMPLATE,
    TemplateError,
    clean_vlm_text,
    combine,
    confident_direction,
    direction_terms,
    measured_fields,
    render_instruction,
    sanitize_instruction,
    stated_attributes,
    temperature_terms,
    template_for,
)
from relightflow.captions.schema import (
    DIRECTIONS,
    TEMPERATURES,
    InvalidResponse,
    json_schema,
    parse_description,
)

GOOD = {"light_source": "softbox", "direction": "Right", "color_temperature": "cool", "hardness": "soft",
        "setting": "studio", "phrase": "cool softbox light from the right"}  # fmt: skip
MEASURED = {"horizontal": "left", "vertical": "above", "backlit": False, "color_temperature": "warm",
            "hardness": "hard", "key": "mid", "light_type": "daylight", "light_color": "white",
            "direction_confidence": 0.9, "color_confidence": 0.2}  # fmt: skip


def test_parse_plain_fenced_and_chatty_json() -> None:
    assert parse_description(json.dumps(GOOD)).direction == "right"  # normalised to lower case
    fenced = f"Here you go:\n```json\n{json.dumps(GOOD)}\n```"
    assert parse_description(fenced).light_source == "softbox"
    assert parse_description("Sure. " + json.dumps({**GOOD, "extra": 1}) + " Done.").setting == "studio"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", "empty reply"),
        ("ERROR: upstream timeout", "no JSON object"),
        ('{"light_source": "sun", ', "no JSON object"),
        ("{'light_source': 'sun'}", "invalid JSON"),
        ("[1, 2]", "no JSON object"),
        (json.dumps({**GOOD, "direction": "diagonal"}), "schema validation failed: direction"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "phrase"}), "schema validation failed: phrase"),
        (json.dumps({**GOOD, "phrase": "x" * 500}), "schema validation failed: phrase"),
    ],
)
def test_invalid_replies_raise_with_reason(reply: str, reason: str) -> None:
    with pytest.raises(InvalidResponse, match=reason):
        parse_description(reply)


def test_json_schema_is_closed_and_enumerated() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(GOOD)
    assert schema["properties"]["color_temperature"]["enum"] == ["warm", "neutral", "cool"]


def test_sanitize_instruction() -> None:
    assert (
        sanitize_instruction('  "Warm\x00 light\u200b from\tthe left ,  indoor."\n')
        == "Warm light from the left, indoor"
    )
    capped = sanitize_instruction("soft window light from the upper left, warm tone", max_chars=20)
    assert capped == "soft window light" and len(capped) <= 20
    assert sanitize_instruction("a" * 50, max_chars=10) == "a" * 10
    assert sanitize_instruction("\x07\x1b ,.") == ""


def test_measured_fields_render() -> None:
    fields = measured_fields(MEASURED)
    assert render_instruction(fields, MEASURED_TEMPLATE) == "hard warm daylight from the upper left"
    assert render_instruction(fields, LEGACY_TEMPLATE) == "daylight from the upper left, warm tone"
    lamp = measured_fields({**MEASURED, "light_type": "artificial", "hardness": "soft", "horizontal": "left",
                            "vertical": "level"})  # fmt: skip
    assert render_instruction(lamp, MEASURED_TEMPLATE) == "soft warm lamp light from the left"
    backlit = measured_fields({**MEASURED, "backlit": True, "hardness": "medium"})
    assert render_instruction(backlit, MEASURED_TEMPLATE) == "warm daylight from the back"
    assert measured_fields({**MEASURED, "horizontal": "front"})["direction"] == "top"


def test_unsure_direction_stays_out() -> None:
    unsure = {**MEASURED, "direction_confidence": 0.3}
    fields = measured_fields(unsure)
    text = render_instruction(fields, MEASURED_TEMPLATE)
    assert text == "hard warm daylight" and stated_attributes(text, fields)["light_direction"] is None
    # the legacy template has no optional brackets: its dangling "from the" goes
    assert render_instruction(fields, LEGACY_TEMPLATE) == "daylight, warm tone"
    # per-axis confidences, when the measurement gives them: a confident side, an unsure height
    assert confident_direction({**MEASURED, "vertical_confidence": 0.2}) == "left"
    assert confident_direction({**MEASURED, "horizontal_confidence": 0.2}) == "top"
    assert confident_direction({**MEASURED, "horizontal": "front", "vertical": "level"}) == ""


def test_template_with_unknown_field_fails_fast() -> None:
    with pytest.raises(TemplateError, match="colour"):
        render_instruction(measured_fields(MEASURED), "{light} {colour}")
    with pytest.raises(TemplateError, match="dir"):
        render_instruction(measured_fields(MEASURED), "{light}[ from the {dir}]")
    assert template_for("measured", None) == MEASURED_TEMPLATE and template_for("openai", None) == VLM_TEMPLATE
    assert template_for("openai", "{phrase}") == "{phrase}"


def test_combine_modes() -> None:
    vlm = parse_description(json.dumps(GOOD)).model_dump()
    checked, record = combine(vlm, MEASURED, "check")
    assert (checked["direction"], checked["temperature"]) == ("right", "cool")
    assert record == {"agreement_direction": False, "agreement_temperature": False, "agreement": 0.0,
                      "direction_source": "vlm", "temperature_source": "vlm"}  # fmt: skip
    overridden, record = combine(vlm, MEASURED, "override")
    assert (overridden["direction"], overridden["temperature"]) == ("upper left", "warm")
    assert (record["direction_source"], record["temperature_source"]) == ("measured", "measured")
    # complement: the confident measured direction wins, the unsure measured temperature does not
    complemented, record = combine(vlm, MEASURED, "complement")
    assert (complemented["direction"], complemented["temperature"]) == ("upper left", "cool")
    assert (record["direction_source"], record["temperature_source"]) == ("measured", "vlm")
    # an unsure measured direction: left out, not the VLM's guess
    unsure, record = combine(vlm, {**MEASURED, "direction_confidence": 0.2}, "complement")
    assert unsure["direction"] == "" and record["direction_source"] == "none"
    agreeing, record = combine({**vlm, "direction": "left", "color_temperature": "warm"}, MEASURED, "check")
    assert record["agreement"] == 1.0 and agreeing["light"] == "softbox"
    with pytest.raises(ValueError, match="attributes"):
        combine(vlm, MEASURED, "average")


def test_vlm_words_kept_for_source_and_setting() -> None:
    vlm = {"light_source": "warm sunset light through window blinds from the left", "direction": "left",
           "color_temperature": "warm", "hardness": "soft", "setting": "living room",
           "phrase": "warm sunset light through window blinds from the left"}  # fmt: skip
    right = {**MEASURED, "horizontal": "right", "vertical": "level", "color_confidence": 0.9}
    fields, record = combine(vlm, right, "complement")
    text = render_instruction(fields, VLM_TEMPLATE)
    assert text == "warm sunset light through window blinds from the right, living room"
    assert not record["agreement_direction"]  # the VLM's left/right confusion, recorded
    assert stated_attributes(text, fields) == {"light_direction": "right", "color_temperature": "warm"}
    assert render_instruction(fields, "{phrase}") == "warm sunset light through window blinds"  # its "left" went
    cool = {**right, "color_temperature": "cool"}  # a confident cool measurement: no "sunset", no "warm"
    assert render_instruction(combine(vlm, cool, "complement")[0], VLM_TEMPLATE) == (
        "cool light through window blinds from the right, living room"
    )
    neon = {**vlm, "light_source": "neon pink and blue signs", "setting": "city street at night"}
    assert render_instruction(combine(neon, right, "complement")[0], VLM_TEMPLATE) == (
        "warm neon pink signs from the right, city street at night"
    )


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("light from the upper left side", "light"),
        ("lamp above the desk", "lamp"),
        ("soft side lighting", "soft lighting"),
        ("backlight from behind the subject", "light"),
        ("golden hour sun coming from the right", "golden hour sun"),
        ("overhead fluorescent tubes", "fluorescent tubes"),
        ("light on the right-hand side, office", "light, office"),
        ("sunlight through the blinds, near window blinds", "sunlight through the blinds, near window blinds"),
        ("neo punk, city night", "neo punk, city night"),
    ],
)
def test_direction_words_are_scrubbed(text: str, clean: str) -> None:
    assert clean_vlm_text(text, "", "warm") == clean
    assert not direction_terms(clean)


VLM_TEXTS = ["warm sunset light through window blinds from the upper left", "cold blue neon from behind",
             "sunlight from the right side", "lamp above the desk, golden", "soft light", "overhead tubes",
             "candlelight on the left, cool night", "rim light from the back", "frontal camera flash"]  # fmt: skip
TEMPLATES = [VLM_TEMPLATE, MEASURED_TEMPLATE, LEGACY_TEMPLATE, "{phrase}", "{light}, {setting}",
             "{phrase}, {temperature} tone"]  # fmt: skip


def test_instruction_never_contradicts_its_columns() -> None:
    """Over random VLM words, measurements, modes and templates: every direction / temperature word of the
    instruction agrees with the columns written beside it (read as the evaluation reads them), and an unsure
    measured direction never reaches the instruction outside ``check`` mode."""
    from relightflow.evaluate.instruction import parse_direction

    rng = np.random.default_rng(0)
    opposite = {"warm": {"cool", "neutral"}, "cool": {"warm", "neutral"}, "neutral": {"warm", "cool"}}
    for _ in range(400):
        vlm = {"light_source": rng.choice(VLM_TEXTS), "setting": rng.choice(["beach", "office on the left", "studio"]),
               "phrase": rng.choice(VLM_TEXTS), "direction": rng.choice(DIRECTIONS),
               "color_temperature": rng.choice(TEMPERATURES), "hardness": "soft"}  # fmt: skip
        measured = {"horizontal": rng.choice(["left", "right", "front"]),
                    "vertical": rng.choice(["above", "below", "level"]), "backlit": bool(rng.random() < 0.1),
                    "color_temperature": rng.choice(TEMPERATURES), "hardness": "hard", "key": "mid",
                    "light_type": "daylight", "light_color": "white",
                    "direction_confidence": float(rng.random()), "color_confidence": float(rng.random())}  # fmt: skip
        mode, template = rng.choice(MODES), str(rng.choice(TEMPLATES))
        fields, _ = combine(vlm, measured, str(mode))
        text = render_instruction(fields, template)
        columns = stated_attributes(text, fields)
        asked = parse_direction(columns["light_direction"])
        for axis, value in direction_terms(text):
            key = {"h": "horizontal", "v": "vertical", "b": "back", "f": "horizontal"}[axis]
            assert key in asked and value in ("*", asked[key]), (text, columns)
        assert temperature_terms(text) <= {columns["color_temperature"]}, (text, columns)
        implied = {IMPLIED_TEMPERATURE[w] for w in re.findall(r"[a-z]+", text.lower()) if w in IMPLIED_TEMPERATURE}
        assert not implied & opposite[fields["temperature"]], (text, fields)
        if mode != "check" and measured["direction_confidence"] < MIN_CONFIDENCE and not measured["backlit"]:
            assert columns["light_direction"] is None and not direction_terms(text), (text, measured)


def test_cache_roundtrip_counts_and_keys(tmp_path: Path) -> None:
    cache = CaptionCache(tmp_path)
    fields = {"digest": "abc", "image_size": [64, 48], "provider": "openai", "model": "m",
              "endpoint": "https://api.openai.com/v1/", "prompt": "v1+0123", "params": {"temperature": 0.2, "seed": 1}}  # fmt: skip
    key = cache_key(fields)
    assert cache.get(key) is None
    cache.put(key, {"description": GOOD, "raw": "{}"})
    assert cache.get(key)["description"] == GOOD and cache_key(dict(fields)) == key  # nothing changed: a hit
    assert cache.stats() == {"cache_hits": 1, "cache_misses": 1}
    changed = {"digest": "abd", "image_size": [96, 72], "provider": "mistral", "model": "m2",
               "endpoint": "http://127.0.0.1:8000/v1/", "prompt": "v2+0123", "params": {"temperature": 0.2, "seed": 2}}  # fmt: skip
    others = [cache_key({**fields, name: value}) for name, value in changed.items()]
    assert set(changed) == set(KEY_FIELDS) and key not in others and len(set(others)) == len(others)
    with pytest.raises(ValueError, match="missing"):
        cache_key({k: v for k, v in fields.items() if k != "endpoint"})
    (tmp_path / "captions" / key[:2] / f"{key}.json").write_text("{truncated")
    assert cache.get(key) is None  # a corrupt entry is a miss, not a crash
    assert not list((tmp_path / "captions").rglob(".*"))  # no temp files left behind


def test_prompt_edit_changes_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    from relightflow.captions import schema

    before = schema.prompt_fingerprint()
    monkeypatch.setattr(schema, "USER_PROMPT", schema.USER_PROMPT + " Be brief.")
    assert schema.prompt_fingerprint() != before
