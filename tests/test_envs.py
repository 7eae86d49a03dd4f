"""The per-rule conda environments (envs/*.yaml, used with --software-deployment-method conda).

conda cannot run here (no channel reachable), so the files are checked statically: each parses, names
packages that exist, pins the versions this venv tests (or, for vLLM's env, the versions vLLM pins), and
every rule that uses a GPU names an environment that has a GPU framework.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

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


def _rules(tmp_path: Path, monkeypatch) -> list:
    """The workflow's rules, parsed by Snakemake with the default config (real models: GPU rules on)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    from relightflow.images import save_image
    from relightflow.testing import render_scene

    save_image(tmp_path / "images/a.jpg", render_scene(size=64)[0])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"input": {"root": str(tmp_path / "images")}}))
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
