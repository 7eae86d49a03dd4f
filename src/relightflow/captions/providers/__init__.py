"""VLM providers behind one interface (:class:`~relightflow.captions.providers.base.Captioner`), and the one
table of how each runs.

:data:`SPECS` maps every ``captions.provider`` to its client class, the conda env its code needs and the
resources of its caption job; ``rules/captions.smk`` reads the env and resources from here and
``tests/test_envs.py`` checks each env declares what that provider imports. ``mistral`` is the
OpenAI-compatible client with Mistral's defaults (section ``captions.mistral``). ``make_captioner`` builds
the configured one; ``measured`` needs no model and gives None. Heavy imports (vLLM, transformers, torch,
httpx) happen only when a provider is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relightflow.captions.providers.base import Captioner, CaptionResult, Counters

_PKG = "relightflow.captions.providers"


@dataclass(frozen=True)
class ProviderSpec:
    """How one provider runs.

    ``module``/``cls``: its client (None: no model); ``env``: conda env file, relative to the repository
    root; ``gpus``: GPUs per caption job (an int, or the key of the provider's section that holds it);
    ``mem_mb``: host memory per job; ``api``: requests go to an endpoint, so the job declares
    ``api_requests`` = its ``concurrency`` (capped across jobs by the profile's ``resources``).
    """

    module: str | None
    cls: str | None
    env: str
    gpus: int | str = 0
    mem_mb: int = 4000
    api: bool = False


SPECS: dict[str, ProviderSpec] = {
    "vllm": ProviderSpec(f"{_PKG}.vllm_offline", "VLLMCaptioner", "envs/vlm.yaml", gpus="gpus", mem_mb=64000),
    "openai": ProviderSpec(f"{_PKG}.openai_http", "OpenAICaptioner", "envs/base.yaml", api=True),
    "mistral": ProviderSpec(f"{_PKG}.openai_http", "OpenAICaptioner", "envs/base.yaml", api=True),
    "transformers": ProviderSpec(f"{_PKG}.hf_local", "TransformersCaptioner", "envs/captions-hf.yaml", gpus=1,
                                 mem_mb=32000),  # fmt: skip
    "measured": ProviderSpec(None, None, "envs/base.yaml"),
}
PROVIDERS = tuple(SPECS)
GPU_PROVIDERS = tuple(name for name, spec in SPECS.items() if spec.gpus)

__all__ = ["GPU_PROVIDERS", "PROVIDERS", "SPECS", "CaptionResult", "Captioner", "Counters", "ProviderSpec",
           "job_resources", "make_captioner", "spec"]  # fmt: skip


def __getattr__(name: str) -> Any:
    """The shared types of :mod:`.base`, imported on first use (the workflow reads :data:`SPECS` when parsed)."""
    if name in ("Captioner", "CaptionResult", "Counters"):
        from relightflow.captions.providers import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def spec(provider: str) -> ProviderSpec:
    """The table row of ``provider`` (ValueError naming the known ones)."""
    if provider not in SPECS:
        raise ValueError(f"captions.provider must be one of {PROVIDERS}, got {provider!r}")
    return SPECS[provider]


def job_resources(cfg: dict[str, Any]) -> dict[str, int]:
    """``gpu``, ``mem_mb`` and ``api_requests`` of a caption job for the captions section ``cfg``."""
    row = spec(cfg["provider"])
    gpus = int(cfg[cfg["provider"]][row.gpus]) if isinstance(row.gpus, str) else row.gpus
    api = int(cfg[cfg["provider"]]["concurrency"]) if row.api else 0
    return {"gpu": gpus, "mem_mb": row.mem_mb, "api_requests": api}


def make_captioner(cfg: dict[str, Any], max_concurrency: int | None = None) -> Captioner | None:
    """The provider configured in ``cfg["provider"]`` (its own section ``cfg[provider]`` holds its options).

    ``max_concurrency`` caps an endpoint client's requests in flight (the job's granted ``api_requests``).
    """
    provider = cfg["provider"]
    row = spec(provider)
    if row.module is None:
        return None
    client = getattr(importlib.import_module(row.module), row.cls)
    if row.api:
        return client(cfg[provider], name=provider, max_concurrency=max_concurrency)
    return client(cfg[provider])
