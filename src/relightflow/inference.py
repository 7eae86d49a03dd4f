"""Relight images with a trained model: the one inference path of the CLI, evaluation and validation grids.

A model folder is what training writes to ``results/train/model``: an InstructPix2Pix pipeline (SD1.5 or
SDXL, a diffusers folder) or a Flux Kontext LoRA (LoRA weights over ``base_model``), each with
``relightflow_model.json`` beside it: the family and the inference settings training used for its
validation grids (:class:`ModelSettings`). A plain diffusers folder without that file (e.g. a baseline such
as ``timbrooks/instruct-pix2pix`` saved locally) gets the family's defaults (:func:`pipeline_settings`).
Settings passed to :func:`load` override the saved ones only when they are not None.

Rules, the same wherever a model runs:

- **Size.** The model runs at the input's aspect ratio with the shorter side scaled to ``resolution``
  (the input's own size when None), each side rounded to the nearest multiple of ``size_multiple`` (the
  VAE factor, times 2 for Flux's 2x2 latent packing). That matches training, which scales the shorter
  side to ``train.resolution`` before its square crop. Images are resized with Lanczos on the way in
  and, unless ``keep_model_size``, back to the input size on the way out.
- **Seed.** Each image's noise comes from a CPU generator seeded with ``image_seed(seed, sha256 of its
  pixels)``: it depends only on the seed and the pixels, never on a file name, batch or position, so the
  CLI, evaluation and the validation grids draw the same noise for the same image, and every evaluated
  system (model, baselines) is compared under the same noise. One image per pipeline call, so batching
  never changes a pixel.
- **Precision.** ``auto``: bf16 on CUDA, fp32 elsewhere (:func:`relightflow.devices.torch_dtype`); a
  model trained in full precision saves ``fp32``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from relightflow.devices import pick_device, torch_dtype
from relightflow.images import image_seed
from relightflow.manifest import read_json, write_json

log = logging.getLogger(__name__)

SETTINGS_FILE = "relightflow_model.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
Family = Literal["sd15", "sdxl", "flux-kontext"]
PIPELINE_FAMILIES = {
    "StableDiffusionInstructPix2PixPipeline": "sd15",
    "StableDiffusionXLInstructPix2PixPipeline": "sdxl",
    "FluxKontextPipeline": "flux-kontext",
}
# sampler defaults of a plain pipeline folder (no settings file): the diffusers / BFL recommendations
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd15": {"num_inference_steps": 20, "guidance_scale": 7.5, "image_guidance_scale": 1.5},
    "sdxl": {"num_inference_steps": 20, "guidance_scale": 7.5, "image_guidance_scale": 1.5},
    "flux-kontext": {"num_inference_steps": 28, "guidance_scale": 2.5, "max_sequence_length": 512},
}
OVERRIDABLE = ("num_inference_steps", "guidance_scale", "image_guidance_scale", "resolution", "precision")


class ModelSettings(BaseModel):
    """``relightflow_model.json``: how to load and run a trained model (extra keys: training facts)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    family: Family
    base_model: str | None = None  # Flux: the pipeline the LoRA goes on; SD: what training started from
    lora_weights: str | None = None  # Flux: LoRA file in the folder
    num_inference_steps: int = Field(ge=1)
    guidance_scale: float = Field(ge=0)
    image_guidance_scale: float | None = None  # InstructPix2Pix only
    resolution: int | None = Field(ge=1)  # shorter side at inference; None: the input's size
    size_multiple: int = Field(ge=1)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    max_sequence_length: int | None = None  # Flux: T5 tokens

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> ModelSettings:
        """A copy with every non-None value of ``overrides`` (keys of :data:`OVERRIDABLE`) applied."""
        given = {k: v for k, v in (overrides or {}).items() if k in OVERRIDABLE and v is not None}
        return self.model_validate({**self.model_dump(), **given})


def read_settings(model_dir: str | os.PathLike) -> ModelSettings | None:
    """The settings saved beside a model, or None for a plain pipeline folder."""
    path = Path(model_dir) / SETTINGS_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    if "family" not in data and data.get("kind") == "flux-kontext-lora":  # written before the family key
        data = {"family": "flux-kontext", "size_multiple": 16, "lora_weights": LORA_WEIGHTS,
                **FAMILY_DEFAULTS["flux-kontext"], **data}  # fmt: skip
    return ModelSettings.model_validate(data)


def write_settings(model_dir: str | os.PathLike, settings: ModelSettings) -> Path:
    path = Path(model_dir) / SETTINGS_FILE
    write_json(path, settings.model_dump())
    return path


def pipeline_settings(pipe, **values: Any) -> ModelSettings:
    """Settings of a loaded pipeline: its family's defaults, its native resolution and size multiple."""
    family = PIPELINE_FAMILIES.get(type(pipe).__name__)
    if family is None:
        raise ValueError(
            f"{type(pipe).__name__} is not an instruction-editing pipeline ({list(PIPELINE_FAMILIES)})"
        )
    factor = pipe.vae_scale_factor
    if family == "flux-kontext":
        native, multiple = pipe.default_sample_size * factor, factor * 2
    else:
        native, multiple = pipe.unet.config.sample_size * factor, factor
    base = {"family": family, "resolution": native, "size_multiple": multiple, **FAMILY_DEFAULTS[family]}
    return ModelSettings.model_validate({**base, **values})


# ---------------------------------------------------------------- the rules


def model_size(width: int, height: int, resolution: int | None, multiple: int) -> tuple[int, int]:
    """(width, height) to run at: shorter side to ``resolution`` (kept when None), nearest multiples."""
    scale = resolution / min(width, height) if resolution else 1.0
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (width, height))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (uint8 RGB) at (width, height), Lanczos."""
    if image.shape[1::-1] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def noise_seed(seed: int, image: np.ndarray) -> int:
    """The seed of an image's noise: from ``seed`` and its pixels only."""
    arr = np.ascontiguousarray(image, dtype=np.uint8)
    digest = hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()
    return image_seed(seed, digest, "relight")


class NonFiniteOutput(ValueError):
    """A prediction with NaN or inf pixels (a diverged model)."""


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] image → uint8; raises :class:`NonFiniteOutput` on NaN / inf."""
    if not np.isfinite(image).all():
        raise NonFiniteOutput("non-finite values in the prediction")
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def call_kwargs(s: ModelSettings, size: tuple[int, int]) -> dict[str, Any]:
    """Sampler arguments of one pipeline call at ``size`` (width, height)."""
    kwargs: dict[str, Any] = {
        "num_inference_steps": s.num_inference_steps,
        "guidance_scale": s.guidance_scale,
    }
    width, height = size
    if s.family == "flux-kontext":
        return {
            **kwargs,
            "height": height,
            "width": width,
            "max_area": width * height,
            "_auto_resize": False,
            "max_sequence_length": s.max_sequence_length or 512,
        }
    kwargs["image_guidance_scale"] = 1.5 if s.image_guidance_scale is None else s.image_guidance_scale
    if s.family == "sdxl":  # SDXL defaults to its native size, not the image's
        kwargs.update(height=height, width=width)
    return kwargs


class Relighter:
    """A loaded pipeline with its settings: ``relighter(image, prompt) -> image`` (uint8 RGB arrays).

    ``prompt_kwargs`` replaces the text argument of the call (training passes cached prompt
    embeddings when the text encoders are not loaded).
    """

    def __init__(
        self,
        pipe,
        settings: ModelSettings,
        seed: int = 0,
        keep_model_size: bool = False,
        prompt_kwargs: Callable[[str], dict[str, Any]] | None = None,
    ):
        self.pipe, self.settings, self.seed = pipe, settings, seed
        self.keep_model_size, self.prompt_kwargs = keep_model_size, prompt_kwargs

    def __call__(self, image: np.ndarray, prompt: str) -> np.ndarray:
        import torch

        height, width = image.shape[:2]
        size = model_size(width, height, self.settings.resolution, self.settings.size_multiple)
        generator = torch.Generator("cpu").manual_seed(noise_seed(self.seed, image))
        text = self.prompt_kwargs(prompt) if self.prompt_kwargs else {"prompt": prompt}
        with torch.inference_mode():
            out = self.pipe(
                image=Image.fromarray(resize(image, size)),
                generator=generator,
                output_type="np",
                **text,
                **call_kwargs(self.settings, size),
            ).images[0]
        out = to_uint8(np.asarray(out, dtype=np.float32))
        return out if self.keep_model_size else resize(out, (width, height))


# ---------------------------------------------------------------- loading


def load(
    model_dir: str | os.PathLike,
    device: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    keep_model_size: bool = False,
    base_model: str | None = None,
    fp8: bool = False,
    cpu_offload: bool | str = False,
) -> Relighter:
    """A :class:`Relighter` for a model folder (local files only).

    ``overrides``: sampler settings (:data:`OVERRIDABLE`) replacing the saved ones when not None.
    Flux Kontext LoRA folders only: ``base_model`` replaces the saved base pipeline, ``fp8`` stores the
    transformer in float8 (half the memory), ``cpu_offload`` ``True``/``"model"`` keeps one model on
    the GPU at a time, ``"sequential"`` one layer (slowest, least memory).
    """
    device = pick_device(device)
    saved = read_settings(model_dir)
    precision = (overrides or {}).get("precision") or (saved.precision if saved else "auto")
    dtype = torch_dtype(precision, device)
    if saved is not None and saved.lora_weights:
        pipe = load_flux_lora(model_dir, saved, device, dtype, base_model, fp8, cpu_offload)
    else:
        pipe = load_pipeline(model_dir, device, dtype)
    settings = (saved or pipeline_settings(pipe)).with_overrides(overrides)
    log.info(
        "loaded %s (%s) on %s: %s",
        model_dir,
        settings.family,
        device,
        {k: getattr(settings, k) for k in OVERRIDABLE},
    )
    return Relighter(pipe, settings, seed, keep_model_size)


def load_pipeline(model_dir: str | os.PathLike, device: str, dtype):
    """A diffusers pipeline folder, never the hub, on ``device``, progress bar off."""
    from diffusers import DiffusionPipeline

    index = read_json(Path(model_dir) / "model_index.json")
    extra = {"safety_checker": None} if "safety_checker" in index else {}
    pipe = DiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_flux_lora(
    model_dir,
    settings: ModelSettings,
    device: str,
    dtype,
    base_model: str | None = None,
    fp8: bool = False,
    cpu_offload: bool | str = False,
):
    """The base Kontext pipeline with the folder's LoRA (optionally fp8 transformer storage, CPU offload)."""
    import torch
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(base_model or settings.base_model, dtype=dtype)
    if fp8:  # before the LoRA: base weights in float8, upcast per layer; LoRA weights stay in ``dtype``
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    pipe.load_lora_weights(str(model_dir), weight_name=settings.lora_weights)
    for name, p in pipe.transformer.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(dtype)
    offload = "model" if cpu_offload is True else (cpu_offload or None)
    if offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
