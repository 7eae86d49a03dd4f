"""The configuration: one schema holds every setting's description and default; config.yaml is rendered
from it; the schema's enums equal the code's registries; validation fills defaults and names bad keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

from relightflow import config, workflow
from relightflow.captions.providers import PROVIDERS
from relightflow.captions.render import MODES
from relightflow.filter.score import BACKENDS
from relightflow.filter.select import SPLITS
from relightflow.pairs.albedo import ALBEDOS, METHODS
from relightflow.pairs.degrade import BACKGROUNDS, KINDS
from relightflow.pairs.segment import SEGMENTERS


def _leaves(node: dict, path: str = ""):
    for name, prop in node.get("properties", {}).items():
        here = f"{path}.{name}" if path else name
        if "properties" in prop and prop.get("type") == "object" and prop.get("default") == {}:
            yield from _leaves(prop, here)
        else:
            yield here, prop


def test_every_setting_has_a_description_and_a_default() -> None:
    leaves = dict(_leaves(config.schema()))
    assert len(leaves) > 150
    missing = [k for k, p in leaves.items() if not p.get("description") or "default" not in p]
    assert missing == []


def test_config_yaml_is_rendered_from_the_schema() -> None:
    text = (REPO / "config.yaml").read_text()
    assert text == config.render_yaml(), "run `relightflow config --write config.yaml` after editing the schema"
    assert config.validate(yaml.safe_load(text)) == config.defaults()


def test_schema_enums_are_the_code_registries() -> None:
    assert config.enums("pairs.segmenter") == list(SEGMENTERS)
    assert config.enums("pairs.degradations.kind") == list(KINDS)
    assert config.enums("pairs.background") == list(BACKGROUNDS)
    assert config.enums("pairs.albedo") == list(ALBEDOS) and config.enums("pairs.retinex.method") == list(METHODS)
    assert config.enums("filter.backend") == list(BACKENDS)
    assert config.enums("captions.provider") == list(PROVIDERS)
    assert config.enums("captions.attributes") == list(MODES)
    assert set(config.defaults()["filter"]["splits"]) == set(SPLITS)
    stages = config.schema()["properties"]["stages"]
    assert stages["items"]["enum"] == stages["default"]


def test_defaults_fill_in_nested_sections_and_overrides_merge() -> None:
    cfg = config.validate({"pairs": {"segmenter": "none", "retinex": {"blend": 0.5}}})
    assert cfg["pairs"]["retinex"] == {**config.defaults()["pairs"]["retinex"], "blend": 0.5}
    assert cfg["captions"]["openai"]["api_key_env"] is None and cfg["images"]["formats"][0] == "JPEG"
    assert config.section("pairs", variants=3)["variants"] == 3


@pytest.mark.parametrize(
    ("bad", "named"),
    [({"shards": {"sise": 3}}, "sise"), ({"ingest": {"min_side": "big"}}, "ingest.min_side"),
     ({"images": {"formats": ["JPEG", "EPS"]}}, "images.formats"), ({"filter": {"backend": "clip2"}}, "filter.backend")],
)  # fmt: skip
def test_a_bad_setting_is_named(bad: dict, named: str) -> None:
    with pytest.raises(config.ConfigError, match=named.split(".")[-1]):
        config.validate(bad)


def test_parsing_writes_only_the_shard_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's plan comes from the files its rule will write: parsing creates no image and no model."""
    monkeypatch.chdir(tmp_path)
    cfg = config.validate(yaml.safe_load((REPO / "profiles/demo/demo.yaml").read_text()))
    shards = workflow.plan(cfg)
    assert shards and not Path(cfg["input"]["root"]).exists() and not Path(cfg["demo"]["base_model"]).exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        [".lock", "assignment.json", "shards.json", *(f"{s}.json" for s in shards)]
    )
