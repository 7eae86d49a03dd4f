"""VLM providers behind one interface (:class:`~relightflow.captions.providers.base.Captioner`).

``make_captioner(captions_cfg)`` builds the one named by ``captions.provider``; ``measured`` needs no
model and gives None. Heavy imports (vLLM, transformers, torch) happen only when that provider is built.
"""

from __future__ import annotations

from typing import Any

from relightflow.captions.providers.base import Captioner, CaptionResult, Counters

PROVIDERS = ("vllm", "openai", "transformers", "measured")
GPU_PROVIDERS = ("vllm", "transformers")

__all__ = ["PROVIDERS", "GPU_PROVIDERS", "CaptionResult", "Captioner", "Counters", "make_captioner"]


def make_captioner(cfg: dict[str, Any]) -> Captioner | None:
    """The provider configured in ``cfg["provider"]`` (its own section ``cfg[provider]`` holds its options)."""
    provider = cfg["provider"]
    if provider == "measured":
        return None
    if provider == "openai":
        from relightflow.captions.providers.openai_http import OpenAICaptioner

        return OpenAICaptioner(cfg["openai"])
    if provider == "vllm":
        from relightflow.captions.providers.vllm_offline import VLLMCaptioner

        return VLLMCaptioner(cfg["vllm"])
    if provider == "transformers":
        from relightflow.captions.providers.hf_local import TransformersCaptioner

        return TransformersCaptioner(cfg["transformers"])
    raise ValueError(f"captions.provider must be one of {PROVIDERS}, got {provider!r}")
