"""Load a trained relighting pipeline from a local folder and relight batches of images with it.

A folder is either a diffusers pipeline (``model_index.json`` names the class:
StableDiffusionInstructPix2PixPipeline, StableDiffusionXLInstructPix2PixPipeline, FluxKontextPipeline) or
a Flux Kontext LoRA folder written by :mod:`relightflow.train.flux_kontext` (its base pipeline plus the
LoRA, through that module's own loader). Call arguments a pipeline does not take
(``image_guidance_scale`` for Flux Kontext, ``height``/``width`` for InstructPix2Pix) are dropped by
inspecting its signature.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from relightflow.images import image_seed

log = logging.getLogger(__name__)

SIZE_MULTIPLE = 16  # image sides are rounded to this (VAE factor x UNet / transformer patch)


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else CUDA when available, else CPU."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(precision: str, device: str):
    import torch

    if precision == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def model_size(shape: tuple[int, ...], resolution: int | None) -> tuple[int, int]:
    """(height, width) the model runs at: shorter side scaled to ``resolution``, rounded to 16 px."""
    h, w = shape[:2]
    scale = resolution / min(h, w) if resolution else 1.0
    return tuple(max(SIZE_MULTIPLE, round(s * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE) for s in (h, w))


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (height, width): area interpolation when shrinking, bicubic when enlarging."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    interp = cv2.INTER_AREA if h * w < image.shape[0] * image.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(image, (w, h), interpolation=interp)


@dataclass
class Relighter:
    """A loaded pipeline plus the inference settings of an evaluation."""

    pipe: Any
    name: str = "model"
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    resolution: int | None = 512
    seed: int = 0
    _params: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self._params = set(inspect.signature(self.pipe.__call__).parameters)

    def _kwargs(self, size: tuple[int, int]) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            image_guidance_scale=self.image_guidance_scale,
            height=size[0],
            width=size[1],
            max_area=size[0] * size[1],
            _auto_resize=False,
            output_type="np",
        )
        return {k: v for k, v in kwargs.items() if k in self._params}

    def __call__(
        self, images: list[np.ndarray], instructions: list[str], keys: list[str]
    ) -> list[np.ndarray]:
        """Relight same-shaped images; float [0, 1] outputs at the inputs' shape (seeded per key)."""
        import torch
        from PIL import Image

        shape = images[0].shape
        size = model_size(shape, self.resolution)
        device = self.pipe.device
        generators = [
            torch.Generator(device="cpu").manual_seed(image_seed(self.seed, k, "evaluate", self.name))
            for k in keys
        ]
        pil = [Image.fromarray(resize_to(im, size)) for im in images]
        with torch.inference_mode():
            out = self.pipe(
                prompt=list(instructions), image=pil, generator=generators, **self._kwargs(size)
            ).images
        log.debug("%s relit %d images at %s on %s", self.name, len(images), size, device)
        return [resize_to(np.asarray(o, dtype=np.float32), shape[:2]) for o in out]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] image → uint8; raises ValueError on NaN / inf (a diverged model)."""
    if not np.isfinite(image).all():
        raise ValueError("non-finite values in the prediction")
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _dtype_arg() -> str:
    """``dtype`` (diffusers >= 0.36 deprecates ``torch_dtype``) when ``from_pretrained`` documents it."""
    from diffusers import DiffusionPipeline

    documented = re.search(r"^\s+dtype \(", DiffusionPipeline.from_pretrained.__doc__ or "", re.MULTILINE)
    return "dtype" if documented else "torch_dtype"


def load_pipeline(model_dir: str | os.PathLike, device: str | None = None, precision: str = "auto"):
    """A pipeline from a local folder (never the hub) on ``device``, progress bar off (see module doc)."""
    from diffusers import DiffusionPipeline

    from relightflow.train import flux_kontext

    device = pick_device(device)
    if flux_kontext.is_flux_kontext_model(model_dir):
        info = json.loads((Path(model_dir) / flux_kontext.MODEL_INFO).read_text(encoding="utf-8"))
        log.info("loading Flux Kontext LoRA %s on base %s", model_dir, info.get("base_model"))
        return flux_kontext.load_kontext_with_lora(model_dir, info, device, _dtype(precision, device))
    index = json.loads((Path(model_dir) / "model_index.json").read_text(encoding="utf-8"))
    extra = {"safety_checker": None} if "safety_checker" in index else {}
    extra[_dtype_arg()] = _dtype(precision, device)
    pipe = DiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    log.info("loaded %s from %s on %s", type(pipe).__name__, model_dir, device)
    return pipe.to(device)


def load_relighter(model_dir: str | os.PathLike, name: str, cfg: dict[str, Any], seed: int,
                   device: str | None = None) -> Relighter:  # fmt: skip
    """A :class:`Relighter` for the pipeline in ``model_dir`` with the ``evaluate`` config's settings."""
    return Relighter(
        load_pipeline(model_dir, device, cfg.get("precision", "auto")),
        name=name,
        num_inference_steps=int(cfg.get("num_inference_steps", 20)),
        guidance_scale=float(cfg.get("guidance_scale", 7.5)),
        image_guidance_scale=float(cfg.get("image_guidance_scale", 1.5)),
        resolution=cfg.get("resolution"),
        seed=seed,
    )
