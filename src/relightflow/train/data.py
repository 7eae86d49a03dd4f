"""Training batches from an exported split (images) or from its cached VAE latents.

Images: both members of a triplet get the same resize (shorter side to the training resolution), the same
crop (random or centre) and the same horizontal flip, then are scaled to [-1, 1]. For SDXL the original
size and crop corner are kept for micro-conditioning. Latents: the cached fp16 tensors are decoded as is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

LATENT_COLUMNS = ("input_latent", "target_latent_params", "latent_shape")


def resize_shorter(image: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side equals ``resolution`` (bicubic; keeps the aspect ratio)."""
    w, h = image.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    return image if size == (w, h) else image.resize(size, Image.Resampling.BICUBIC)


def crop_box(size: tuple[int, int], resolution: int, rng: random.Random | None) -> tuple[int, int]:
    """(top, left) of a ``resolution`` square crop: random with ``rng``, else centred."""
    w, h = size
    if rng is None:
        return (h - resolution) // 2, (w - resolution) // 2
    return rng.randint(0, h - resolution), rng.randint(0, w - resolution)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → float tensor CxHxW in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@dataclass
class PairTransform:
    """Turn dataset rows (PIL images + prompt) into aligned, cropped, normalised training tensors."""

    resolution: int
    center_crop: bool = False
    random_flip: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def one(self, source: Image.Image, target: Image.Image) -> dict[str, Any]:
        source, target = source.convert("RGB"), target.convert("RGB")
        if source.size != target.size:
            source = source.resize(target.size, Image.Resampling.BICUBIC)
        original_size = (target.size[1], target.size[0])
        source, target = resize_shorter(source, self.resolution), resize_shorter(target, self.resolution)
        top, left = crop_box(target.size, self.resolution, None if self.center_crop else self.rng)
        box = (left, top, left + self.resolution, top + self.resolution)
        source, target = source.crop(box), target.crop(box)
        if self.random_flip and self.rng.random() < 0.5:
            source = source.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            target = target.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return {
            "original_pixel_values": to_tensor(source),
            "edited_pixel_values": to_tensor(target),
            "original_size": original_size,
            "crop_top_left": (top, left),
        }

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """A ``datasets`` batch transform (``Dataset.with_transform``)."""
        rows = [self.one(s, t) for s, t in zip(batch["input_image"], batch["edited_image"], strict=True)]
        out = {k: [r[k] for r in rows] for k in rows[0]} if rows else {}
        out["edit_prompt"] = list(batch["edit_prompt"])
        return out


def decode_latents(batch: dict[str, list]) -> dict[str, list]:
    """A ``datasets`` batch transform for cached latents: fp16 bytes → float tensors."""
    out: dict[str, list] = {"input_latent": [], "target_latent_params": []}
    for src, tgt, shape in zip(
        batch["input_latent"], batch["target_latent_params"], batch["latent_shape"], strict=True
    ):
        c, h, w = shape
        out["input_latent"].append(
            torch.from_numpy(np.frombuffer(src, np.float16).reshape(c, h, w).astype(np.float32))
        )
        out["target_latent_params"].append(
            torch.from_numpy(np.frombuffer(tgt, np.float16).reshape(2 * c, h, w).astype(np.float32))
        )
    out["edit_prompt"] = list(batch["edit_prompt"])
    out["original_size"] = [tuple(s) for s in batch["original_size"]]
    out["crop_top_left"] = [tuple(s) for s in batch["crop_top_left"]]
    return out


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep prompts and SDXL size tuples as lists."""
    out: dict[str, Any] = {}
    for key in examples[0]:
        values = [e[key] for e in examples]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def train_dataset(data_dir: str, resolution: int, center_crop: bool, random_flip: bool, seed: int):
    """The exported split with :class:`PairTransform` applied on access."""
    from relightflow.dataset import load_split

    ds = load_split(data_dir)
    if len(ds) == 0:
        raise ValueError(f"training split {data_dir} is empty")
    return ds.with_transform(PairTransform(resolution, center_crop, random_flip, seed))


def latent_dataset(latents_dir: str):
    """Cached latents (written by :func:`relightflow.train.latents.cache_latents`) as a dataset."""
    import datasets

    from relightflow.dataset import data_files

    files = data_files(latents_dir)
    if not files:
        raise FileNotFoundError(f"no data-*.parquet in {latents_dir}")
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    return ds.with_transform(decode_latents)


def validation_rows(data_dir: str | None, n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows of a split (PIL images + prompt) for validation grids."""
    from relightflow.dataset import load_split

    if not data_dir or n <= 0:
        return []
    ds = load_split(data_dir)
    return [ds[i] for i in range(min(n, len(ds)))]
