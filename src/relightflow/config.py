"""The workflow's configuration: one schema holds every setting's description and default.

:func:`validate` fills the defaults into a config dict (in place) and checks it; the Snakefile calls it
when the workflow is parsed, and code then reads ``cfg[key]`` — never ``cfg.get(key, default)``.
:func:`defaults` / :func:`section` give the same filled-in values to code and tests that run without
Snakemake. ``config.yaml`` is rendered from the schema (:func:`render_yaml`), so it cannot drift from it.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


class ConfigError(ValueError):
    """A configuration that does not match the schema; the message names every offending key."""


@functools.cache
def schema() -> dict[str, Any]:
    """The parsed JSON schema (a draft 2020-12 document in YAML)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster, parsed at every dry run
    return yaml.load(SCHEMA_PATH.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - a safe loader


@functools.cache
def _validator_class():
    from jsonschema import Draft202012Validator, validators

    properties = Draft202012Validator.VALIDATORS["properties"]

    def fill_defaults(validator, props, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in props.items():
                if "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
        yield from properties(validator, props, instance, subschema)

    return validators.extend(Draft202012Validator, {"properties": fill_defaults})


def _where(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fill every missing setting with its default (in place) and validate; raise :class:`ConfigError`."""
    errors = sorted(_validator_class()(schema()).iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  {_where(e)}: {e.message}" for e in errors]
        raise ConfigError("invalid configuration (schema: relightflow/config.schema.yaml):\n" + "\n".join(lines))
    return cfg


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, nested dicts key by key (lists and values replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def defaults() -> dict[str, Any]:
    """The complete default configuration."""
    return validate({})


def section(name: str, overrides: Mapping[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    """One validated config section (e.g. ``pairs``): its defaults with ``overrides`` merged in."""
    cfg = {name: merge(merge({}, overrides or {}), more)}
    return validate(cfg)[name]


def enums(path: str) -> list[Any]:
    """The allowed values of a setting, e.g. ``enums("pairs.segmenter")`` (a registry check in tests)."""
    node = schema()
    for part in path.split("."):
        node = node["properties"][part] if "properties" in node else node["items"]["properties"][part]
    return list(node["enum"])


# ---------------------------------------------------------------- config.yaml, rendered from the schema

HEADER = """\
# relightflow configuration: every setting with its default, rendered from the schema
# (src/relightflow/config.schema.yaml, which validates it when the workflow is parsed and fills in any
# setting left out). Regenerate with `relightflow config --write config.yaml` after changing the schema.
# Override with `--configfile my.yaml` (merged over this file) or `--config key=value`; profiles/demo/demo.yaml
# switches every stage to offline backends that need no downloaded weights.
"""


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip()
    return text[:-4].strip() if text.endswith("\n...") or text.endswith(" ...") else text.removesuffix("...").strip()


def _lines(props: Mapping[str, Any], indent: int) -> Iterator[str]:
    pad = "  " * indent
    for name, prop in props.items():
        desc = " ".join(str(prop.get("description", "")).split())
        if "properties" in prop and prop.get("type") == "object" and isinstance(prop.get("default"), dict) \
                and not prop["default"]:  # fmt: skip
            if indent == 0:
                yield ""
            yield f"{pad}{name}:" + (f"  # {desc}" if desc else "")
            yield from _lines(prop["properties"], indent + 1)
            continue
        value = prop.get("default")
        if isinstance(value, list) and value and isinstance(value[0], list | dict):
            yield f"{pad}{name}:" + (f"  # {desc}" if desc else "")
            yield from (f"{pad}  - {_scalar(item)}" for item in value)
            continue
        line = f"{pad}{name}: {_scalar(value)}"
        yield f"{line:<40} # {desc}" if desc else line


def render_yaml() -> str:
    """``config.yaml``: every setting at its default, commented with its description."""
    return HEADER + "\n".join(_lines(schema()["properties"], 0)) + "\n"


def as_json(cfg: Mapping[str, Any]) -> str:
    """A canonical JSON string of a config (for fingerprints and logs)."""
    return json.dumps(cfg, sort_keys=True, default=str)
