"""The per-rule conda environments (envs/*.yaml, used with --software-deployment-method conda).

conda cannot run here (no channel reachable), so the files are checked statically: each parses, names
packages that exist, pins the versions this venv tests (or, for vLLM's env, the versions vLLM pins), and
every rule that uses a GPU names an environment that has a GPU framework.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from relightflow import config

ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
# conda-forge packages an env may list outside pip.
CONDA_PACKAGES = {"python", "pip", "cuda-version", "cudatoolkit", "ffmpeg", "libjpeg-turbo", "git", "nccl"}
# PyPI projects an env may name that this venv does not install (checked to exist on PyPI, Nov 2026).
KNOWN_PYPI = {
    "vllm",
    "flash-attn",
    "xformers",
    "bitsandbytes",
    "qwen-vl-utils",
    "deepspeed",
    "wandb",
    "lpips",
}
# What vllm 0.33.0 requires (its wheel metadata): its env cannot share the project's torch 2.14.1.
VLLM_REQUIRES = {
    "torch": SpecifierSet("==2.14.0"),
    "torchvision": SpecifierSet("==0.29.0"),
    "transformers": SpecifierSet(">=5.16.1,<5.21.0"),
}
GPU_FRAMEWORKS = {"torch", "vllm"}


def _canon(name: str) -> str:
    return name.lower().replace("_", "-")


def _load(path: Path) -> dict:
    env = yaml.safe_load(path.read_text())
    assert isinstance(env, dict), f"{path.name}: not a YAML mapping"
    return env


def _pip_lines(env: dict) -> list[str]:
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            return list(dep.get("pip") or [])
    return []


def _requirements(env: dict) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in _pip_lines(env) if not line.startswith("-")]
    return {_canon(r.name): r for r in reqs}


def _installed(name: str) -> Version | None:
    try:
        return Version(md.version(name))
    except md.PackageNotFoundError:
        return None


def _specifier_allows(spec: SpecifierSet, wanted: SpecifierSet) -> bool:
    """Whether a pinned ``spec`` (==X) lies in ``wanted``; ranges only need to share the pinned version."""
    pins = [s.version for s in spec if s.operator == "=="]
    return all(Version(v) in wanted for v in pins) and bool(pins or not spec)


def test_env_files_exist() -> None:
    names = {p.stem for p in ENV_FILES}
    assert {"base", "clip"} <= names, names


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_structure(path: Path) -> None:
    env = _load(path)
    assert set(env) >= {"name", "channels", "dependencies"}, (
        f"{path.name}: needs name, channels, dependencies"
    )
    assert env["name"].startswith("relightflow-"), env["name"]
    assert "conda-forge" in env["channels"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    python = [d for d in conda if d.split("=")[0].split(">")[0].split("<")[0].strip() == "python"]
    assert python and "3.11" in python[0], f"{path.name}: pin python=3.11 (requires-python >= 3.11)"
    for dep in conda:
        name = dep.split("=")[0].split(">")[0].split("<")[0].strip()
        assert name in CONDA_PACKAGES, f"{path.name}: unknown conda package {name!r}"
    for line in _pip_lines(env):
        if line.startswith("-e "):
            target = (path.parent / line[3:].split("[")[0].strip()).resolve()
            assert (target / "pyproject.toml").exists(), f"{path.name}: {line} is not the project"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_packages_exist_and_pins_match(path: Path) -> None:
    reqs = _requirements(_load(path))
    for name in reqs:
        assert _installed(name) is not None or name in KNOWN_PYPI, f"{path.name}: {name} unknown (typo?)"
    if "vllm" in reqs:
        _check_vllm_env(path, reqs)
        return
    for name, req in reqs.items():  # envs sharing the project's stack: the versions tested here
        installed = _installed(name)
        if installed is not None and req.specifier:
            assert installed in req.specifier, (
                f"{path.name}: {req} but the tested venv has {name} {installed}"
            )


def _check_vllm_env(path: Path, reqs: dict[str, Requirement]) -> None:
    assert str(reqs["vllm"].specifier) == "==0.33.0", f"{path.name}: pin vllm==0.33.0 (the version checked)"
    for name, wanted in VLLM_REQUIRES.items():
        if name in reqs:
            assert _specifier_allows(reqs[name].specifier, wanted), f"{path.name}: vllm needs {name}{wanted}"
    editable = [line for line in _pip_lines(_load(path)) if line.startswith("-e ")]
    assert not any("[ml" in line for line in editable), f"{path.name}: the ml extra pins torch 2.14.1"


def test_torch_pins_agree_with_pyproject() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    torch_pin = next(line for line in pyproject.splitlines() if '"torch==' in line).strip().strip('",')
    for path in ENV_FILES:
        reqs = _requirements(_load(path))
        if "torch" in reqs and "vllm" not in reqs:
            assert str(reqs["torch"]) == torch_pin, f"{path.name}: {reqs['torch']} != pyproject {torch_pin}"


def _rules(tmp_path: Path, monkeypatch, overrides: dict | None = None) -> list:
    """The workflow's rules, parsed by Snakemake with the default config (real models: GPU rules on)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    from relightflow.images import save_image
    from relightflow.testing import render_scene

    save_image(tmp_path / "images/a.jpg", render_scene(size=64)[0])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"input": {"root": str(tmp_path / "images")}, **(overrides or {})}))
    monkeypatch.chdir(tmp_path)
    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=[cfg]),
            storage_settings=StorageSettings(),
            snakefile=REPO / "Snakefile",
            workdir=tmp_path,
        )
        return list(workflow._workflow.rules)


def _may_use_gpu(rule) -> bool:
    """A rule whose `gpu` resource is positive, or computed per job (then it may be)."""
    resource = dict(rule.resources).get("gpu")
    if resource is None:
        return False
    if getattr(resource, "is_evaluable", lambda: False)():
        return True
    value = getattr(resource, "value", resource)
    return not isinstance(value, int) or value > 0


def test_every_rule_names_an_env_and_gpu_rules_a_gpu_framework(tmp_path: Path, monkeypatch) -> None:
    rules = [r for r in _rules(tmp_path, monkeypatch) if r.name != "all"]
    assert rules
    gpu_rules = []
    for rule in rules:
        assert rule.conda_env, f"rule {rule.name} names no conda env"
        env_path = (Path(rule.snakefile).parent / str(rule.conda_env)).resolve()
        assert env_path.exists(), f"rule {rule.name}: {rule.conda_env} does not exist"
        if _may_use_gpu(rule):
            gpu_rules.append(rule.name)
            assert GPU_FRAMEWORKS & set(_requirements(_load(env_path))), f"rule {rule.name}: no torch/vllm"
    if any(r.name == "score_lighting" for r in rules):
        assert "score_lighting" in gpu_rules  # CLIP scoring is the default: a GPU rule


# ---------------------------------------------------------------- caption providers: one table, right envs


def _module_file(name: str) -> Path | None:
    """The source file of a relightflow module (a package's __init__.py), or None when it is no module."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import sits in a ``try`` whose handler catches ImportError (an optional dependency)."""
    while node in parents:
        node, child = parents[node], node
        if isinstance(node, ast.Try) and child in node.body:
            names = [ast.unparse(h.type) for h in node.handlers if h.type is not None]
            if any("ImportError" in n or "ModuleNotFoundError" in n for n in names):
                return True
    return False


def _file_imports(path: Path, package: str) -> set[str]:
    """Absolute names of the modules a file imports (function-level too), optional imports left out."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and not _optional(node, parents):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not _optional(node, parents):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names if _module_file(f"{base}.{alias.name}")}
    return names - {"__future__"}


def _third_party_imports(start: list[Path], skip: set[str]) -> set[str]:
    """Top-level third-party modules needed by the ``start`` files, following relightflow imports
    (package parents included) except the modules in ``skip``."""
    import sys

    todo = [(path, "relightflow") for path in start]
    seen: set[str] = set()
    third: set[str] = set()
    while todo:
        path, package = todo.pop()
        for name in _file_imports(path, package):
            top = name.split(".")[0]
            if top != "relightflow":
                if top not in sys.stdlib_module_names:
                    third.add(top)
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                module = ".".join(parts[:i])
                file = _module_file(module)
                if module in seen or module in skip or file is None:
                    continue
                seen.add(module)
                todo.append((file, module if file.name == "__init__.py" else module.rsplit(".", 1)[0]))
    return third


@functools.cache
def _module_distributions() -> dict[str, list[str]]:
    return md.packages_distributions()  # scans every installed distribution: once


def _distribution(module: str) -> str:
    return _canon(_module_distributions().get(module, [module])[0])


def _declared(env_path: Path) -> set[str]:
    """Distributions an env provides: its pip lines, plus the project's dependencies via ``-e ../``."""
    import tomllib

    env = _load(env_path)
    declared = set(_requirements(env))
    if any(line.startswith("-e ") for line in _pip_lines(env)):
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        declared |= {_canon(Requirement(r).name) for r in project["dependencies"]}
    return declared


def test_every_caption_provider_env_declares_what_its_code_imports() -> None:
    from relightflow.captions.providers import GPU_PROVIDERS, SPECS

    assert set(SPECS) == set(config.enums("captions.provider"))  # the table and the schema agree
    modules = {spec.module for spec in SPECS.values() if spec.module}
    common = [_module_file("relightflow.captions.run"), REPO / "workflow_scripts/caption.py"]
    needs: dict[str, set[str]] = {}
    for provider, spec in SPECS.items():
        env_path = REPO / spec.env
        assert env_path.exists(), f"{provider}: {spec.env} does not exist"
        start = common + ([_module_file(spec.module)] if spec.module else [])
        imports = _third_party_imports(start, modules - {spec.module})
        needs[provider] = {_distribution(m) for m in imports}
        missing = needs[provider] - _declared(env_path)
        assert not missing, f"captions.provider {provider}: {spec.env} lacks {sorted(missing)}"
        if provider in GPU_PROVIDERS:
            assert GPU_FRAMEWORKS & set(_requirements(_load(env_path))), f"{provider}: {spec.env} has no torch/vllm"
    # the analysis sees each provider's own imports (so the check above can fail)
    assert {"torch", "transformers"} <= needs["transformers"] and "vllm" in needs["vllm"]
    assert {"httpx", "tenacity", "pydantic"} <= needs["openai"] == needs["mistral"]
    assert not {"torch", "transformers", "vllm", "httpx"} & needs["measured"]


@pytest.mark.parametrize("provider", ["transformers", "mistral", "measured"])
def test_caption_rule_takes_env_and_resources_from_the_table(provider: str, tmp_path: Path, monkeypatch) -> None:
    from relightflow.captions.providers import SPECS, job_resources

    overrides = {"captions": {"provider": provider}}
    [rule] = [r for r in _rules(tmp_path, monkeypatch, overrides) if r.name == "caption"]
    assert (Path(rule.snakefile).parent / str(rule.conda_env)).resolve() == (REPO / SPECS[provider].env).resolve()
    resources = dict(rule.resources)
    expected = job_resources(config.section("captions", {"provider": provider}))
    assert {k: resources[k] for k in expected} == expected
    assert expected["api_requests"] == (8 if provider == "mistral" else 0)
    assert expected["gpu"] == (1 if provider == "transformers" else 0)
