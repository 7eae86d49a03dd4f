"""Offline batched inference with vLLM's ``LLM.chat`` (its own conda env: ``envs/vlm.yaml``).

vLLM pins its own torch, so it is imported only inside :func:`load_llm`; everything else (messages,
JSON-schema guided decoding parameters, validate-and-retry) is shared with the other providers and
tested without vLLM. Tensor parallelism defaults to the GPUs visible to the job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from relightflow.captions.providers.base import (
    IMAGE_ENCODING,
    CaptionResult,
    Counters,
    chat_messages,
    generate_validated,
)
from relightflow.captions.schema import json_schema

log = logging.getLogger(__name__)


def visible_gpu_count() -> int:
    """GPUs given to this job: CUDA_VISIBLE_DEVICES if set (Slurm / local GPU slots), else torch's count."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return max(1, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


def llm_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Arguments of ``vllm.LLM`` from ``captions.vllm``."""
    return {
        "model": cfg["model"],
        "tensor_parallel_size": int(cfg["tensor_parallel_size"] or visible_gpu_count()),
        "max_model_len": int(cfg["max_model_len"]),
        "gpu_memory_utilization": float(cfg["gpu_memory_utilization"]),
        "limit_mm_per_prompt": {"image": 1},
        "seed": int(cfg["seed"]),
    }


def sampling_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Arguments of ``vllm.SamplingParams`` (structured output added by :func:`load_llm` when available)."""
    return {"temperature": float(cfg["temperature"]), "max_tokens": int(cfg["max_tokens"])}


def load_llm(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """Import vLLM, build the engine and the sampling parameters (JSON-schema guided when supported)."""
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    from vllm import LLM, SamplingParams

    kwargs = sampling_kwargs(cfg)
    if cfg["structured"]:
        try:
            from vllm.sampling_params import StructuredOutputsParams

            kwargs["structured_outputs"] = StructuredOutputsParams(json=json_schema())
        except ImportError:
            log.warning(
                "this vLLM has no StructuredOutputsParams: unguided decoding, replies are validated only"
            )
    return LLM(**llm_kwargs(cfg)), SamplingParams(**kwargs)


class VLLMCaptioner:
    """Batched ``LLM.chat`` with validation; invalid replies are re-asked up to ``max_retries`` times."""

    name = "vllm"
    endpoint = ""

    def __init__(self, cfg: dict[str, Any], llm: Any = None, sampling_params: Any = None):
        self.cfg = cfg
        self.model = cfg["model"]
        self.max_retries = int(cfg["max_retries"])
        self.counters = Counters()
        self.llm, self.sampling_params = llm, sampling_params  # loaded on the first cache miss

    def params(self) -> dict[str, Any]:
        return {**sampling_kwargs(self.cfg), "structured": bool(self.cfg["structured"]), "seed": int(self.cfg["seed"]),
                "image": IMAGE_ENCODING}  # fmt: skip

    def describe(self, images: Sequence[np.ndarray]) -> list[CaptionResult]:
        if self.llm is None:
            self.llm, self.sampling_params = load_llm(self.cfg)
        messages = [chat_messages(image) for image in images]

        def generate(indices: list[int]) -> list[str]:
            outputs = self.llm.chat([messages[i] for i in indices], self.sampling_params, use_tqdm=False)
            return [out.outputs[0].text if out.outputs else "" for out in outputs]

        return generate_validated(generate, len(images), self.max_retries, self.counters)

    def close(self) -> None:
        self.llm = None
