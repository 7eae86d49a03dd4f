"""Relight images with a trained model: one image, a folder, or a manifest of (image, instruction) rows.

The model folder is a diffusers InstructPix2Pix pipeline (SD1.5 or SDXL) written by the trainer, or a
Flux Kontext LoRA folder, which ``relightflow.train.flux_kontext.load_relighter`` loads. Each image runs at
its own aspect ratio: the shorter side is scaled to ``resolution`` and both sides rounded to a multiple
of 8 (the VAE factor); the result is resized back to the input size unless ``keep_model_size``.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from relightflow.images import image_seed, load_rgb, save_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class RelightSettings:
    """Sampler settings of a relighting call."""

    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    seed: int = 0
    resolution: int | None = 512
    keep_model_size: bool = False


def is_flux_lora(model_dir: str | os.PathLike) -> bool:
    """A Flux Kontext LoRA folder written by ``relightflow.train.flux_kontext`` (not a diffusers pipeline)."""
    if not (Path(model_dir) / "relightflow_model.json").is_file():
        return False
    from relightflow.train.flux_kontext import is_flux_kontext_model

    return is_flux_kontext_model(model_dir)


def pick_device(device: str | None = None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_model(model_dir: str | os.PathLike, device: str | None = None, precision: str = "auto"):
    """The relighting model in ``model_dir`` (local files only), on ``device``: a diffusers pipeline, or
    for a Flux Kontext LoRA folder the ``relight(image, prompt, **kw)`` function of its loader."""
    import torch

    device = pick_device(device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if is_flux_lora(model_dir):
        from relightflow.train.flux_kontext import load_relighter

        return load_relighter(model_dir, device=device, dtype=dtype)
    from diffusers import DiffusionPipeline

    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = DiffusionPipeline.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
    if (
        getattr(pipe, "vae", None) is not None
        and pipe.vae.config.get("force_upcast")
        and dtype == torch.float16
    ):
        pipe.vae.to(torch.float32)  # SDXL's VAE overflows in fp16
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def model_size(width: int, height: int, resolution: int | None) -> tuple[int, int]:
    """(width, height) to run at: shorter side → ``resolution`` (kept when None), multiples of 8."""
    scale = resolution / min(width, height) if resolution else 1.0
    return tuple(
        max(SIZE_MULTIPLE, round(s * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE) for s in (width, height)
    )


def _call_kwargs(pipe, size: tuple[int, int], settings: RelightSettings) -> dict[str, Any]:
    kwargs = dict(
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        image_guidance_scale=settings.image_guidance_scale,
        width=size[0],
        height=size[1],
    )
    accepted = set(inspect.signature(pipe.__call__).parameters)
    return {k: v for k, v in kwargs.items() if k in accepted}


def relight_image(
    pipe, image: Image.Image, prompt: str, settings: RelightSettings, key: str = ""
) -> Image.Image:
    """Relight one PIL image with ``prompt`` (seeded by ``settings.seed`` and ``key``)."""
    import torch

    image = image.convert("RGB")
    if not hasattr(pipe, "components"):  # a Flux Kontext relight() function: it sizes the image itself
        return pipe(
            image, prompt, num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
            seed=image_seed(settings.seed, key, "relight"), resolution=settings.resolution,
        )  # fmt: skip
    size = model_size(*image.size, settings.resolution)
    resized = image.resize(size, Image.Resampling.LANCZOS) if size != image.size else image
    generator = torch.Generator("cpu").manual_seed(image_seed(settings.seed, key, "relight"))
    with torch.inference_mode():
        out = pipe(
            prompt=prompt, image=resized, generator=generator, **_call_kwargs(pipe, size, settings)
        ).images[0]
    if not settings.keep_model_size and out.size != image.size:
        out = out.resize(image.size, Image.Resampling.LANCZOS)
    return out


def list_images(path: str | os.PathLike) -> list[Path]:
    """An image file, or the images of a folder (recursive, sorted)."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such image or folder: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def relight_files(
    pipe, jobs: Iterable[tuple[Path, str, Path]], settings: RelightSettings, progress: bool = True
) -> list[dict[str, Any]]:
    """Relight (input, prompt, output) jobs with a progress bar; an unreadable input is reported, not fatal."""
    from tqdm.auto import tqdm

    jobs = list(jobs)
    results = []
    for source, prompt, target in tqdm(jobs, desc="relight", unit="img", disable=not progress):
        try:
            image = Image.fromarray(load_rgb(source))
        except Exception as e:  # ImageError and decoder errors: keep going with the next image
            log.warning("skipped %s: %s", source, e)
            results.append({"input": str(source), "output": None, "prompt": prompt, "error": str(e)})
            continue
        out = relight_image(pipe, image, prompt, settings, key=str(source))
        save_image(target, np.asarray(out))
        results.append({"input": str(source), "output": str(target), "prompt": prompt, "error": None})
    return results


def output_path(source: Path, input_root: Path, out_dir: Path) -> Path:
    """``out_dir/<path relative to the input folder>.png``."""
    rel = source.relative_to(input_root) if input_root.is_dir() else Path(source.name)
    return (out_dir / rel).with_suffix(".png")


def relight(
    model_dir: str | os.PathLike,
    input_path: str | os.PathLike,
    prompt: str,
    out_dir: str | os.PathLike,
    settings: RelightSettings | None = None,
    device: str | None = None,
    precision: str = "auto",
) -> list[dict[str, Any]]:
    """Relight an image or every image of a folder with one instruction; outputs mirror the input tree."""
    settings = settings or RelightSettings()
    pipe = load_model(model_dir, device, precision)
    root, out = Path(input_path), Path(out_dir)
    jobs = [(p, prompt, output_path(p, root, out)) for p in list_images(root)]
    return relight_files(pipe, jobs, settings)


def relight_manifest(
    model_dir: str | os.PathLike,
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: RelightSettings | None = None,
    device: str | None = None,
    precision: str = "auto",
    image_column: Sequence[str] = ("input_path", "path"),
    prompt_column: Sequence[str] = ("instruction", "edit_prompt", "prompt"),
) -> list[dict[str, Any]]:
    """Relight the rows of a Parquet/CSV manifest (first present of ``image_column`` / ``prompt_column``)."""
    import pandas as pd

    path = Path(manifest)
    table = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    img_col = next((c for c in image_column if c in table.columns), None)
    txt_col = next((c for c in prompt_column if c in table.columns), None)
    if img_col is None or txt_col is None:
        raise ValueError(f"{path} needs one of {image_column} and one of {prompt_column}")
    out = Path(out_dir)
    keys = table["image_id"] if "image_id" in table.columns else table.index.astype(str)
    jobs = [
        (Path(src), str(text), out / f"{key}_{i}.png")
        for i, (src, text, key) in enumerate(zip(table[img_col], table[txt_col], keys, strict=True))
    ]
    settings = settings or RelightSettings()
    results = relight_files(load_model(model_dir, device, precision), jobs, settings)
    pd.DataFrame(results).to_csv(out / "relit.csv", index=False)
    return results
