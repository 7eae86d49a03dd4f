"""Structured replies, instruction rendering and sanitising, attribute combination, the response cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relightflow.captions.cache import CaptionCache, cache_key
from relightflow.captions.render import (
    TemplateError,
    combine,
    measured_fields,
    render_instruction,
    sanitize_instruction,
)
from relightflow.captions.schema import InvalidResponse, json_schema, parse_description

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
    text = render_instruction(measured_fields(MEASURED), "{light} from the {direction}, {temperature} tone")
    assert text == "hard daylight from the upper left, warm tone"
    backlit = measured_fields({**MEASURED, "backlit": True, "hardness": "medium"})
    assert render_instruction(backlit) == "daylight from the back, warm tone"
    front_top = measured_fields({**MEASURED, "horizontal": "front"})
    assert front_top["direction"] == "top"


def test_template_with_unknown_field_fails_fast() -> None:
    with pytest.raises(TemplateError, match="colour"):
        render_instruction(measured_fields(MEASURED), "{light} {colour}")


def test_combine_modes() -> None:
    vlm = parse_description(json.dumps(GOOD)).model_dump()
    checked, agreement = combine(vlm, MEASURED, "check")
    assert (checked["direction"], checked["temperature"]) == ("right", "cool")
    assert agreement == {"agreement_direction": False, "agreement_temperature": False, "agreement": 0.0}
    overridden, _ = combine(vlm, MEASURED, "override")
    assert (overridden["direction"], overridden["temperature"]) == ("upper left", "warm")
    # complement: the confident measured direction wins, the unsure measured temperature does not
    complemented, _ = combine(vlm, MEASURED, "complement")
    assert (complemented["direction"], complemented["temperature"]) == ("upper left", "cool")
    agreeing, agreement = combine(
        {**vlm, "direction": "left", "color_temperature": "warm"}, MEASURED, "check"
    )
    assert agreement["agreement"] == 1.0 and agreeing["light"] == "softbox"
    with pytest.raises(ValueError, match="attributes"):
        combine(vlm, MEASURED, "average")


def test_cache_roundtrip_counts_and_keys(tmp_path: Path) -> None:
    cache = CaptionCache(tmp_path)
    key = cache_key("abc", "openai", "m", "v1", {"temperature": 0.2})
    assert cache.get(key) is None
    cache.put(key, {"description": GOOD, "raw": "{}"})
    assert cache.get(key)["description"] == GOOD
    assert cache.stats() == {"cache_hits": 1, "cache_misses": 1}
    others = [cache_key("abd", "openai", "m", "v1", {"temperature": 0.2}),
              cache_key("abc", "vllm", "m", "v1", {"temperature": 0.2}),
              cache_key("abc", "openai", "m2", "v1", {"temperature": 0.2}),
              cache_key("abc", "openai", "m", "v2", {"temperature": 0.2}),
              cache_key("abc", "openai", "m", "v1", {"temperature": 0.3})]  # fmt: skip
    assert key not in others and len(set(others)) == len(others)
    (tmp_path / "captions" / key[:2] / f"{key}.json").write_text("{truncated")
    assert cache.get(key) is None  # a corrupt entry is a miss, not a crash
    assert not list((tmp_path / "captions").rglob(".*"))  # no temp files left behind


def test_prompt_edit_changes_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    from relightflow.captions import schema

    before = schema.prompt_fingerprint()
    monkeypatch.setattr(schema, "USER_PROMPT", schema.USER_PROMPT + " Be brief.")
    assert schema.prompt_fingerprint() != before
