"""Training samples of both families: one reader of an exported split, one transform, cached latents.

Images: both members of a triplet get the same resize (shorter side to the training resolution, bicubic),
the same square crop (random or centre) and, with ``random_flip``, the same horizontal flip; then they
are scaled to [-1, 1]. For SDXL the original size and the crop corner are kept for micro-conditioning.

Geometry never contradicts the words. A horizontal flip swaps the image's left and right, so a flipped
sample's instruction and direction fields are mirrored with it (:func:`mirror_text`, :func:`mirror_row`):
"left" <-> "right" (so "upper left" <-> "upper right"), ``light_direction`` left <-> right, and the light
azimuths in ``degradation_params`` (0 deg = from the right, 180 deg = from the left) become 180 - azimuth.
Words that name no image side ("top", "front", "back", "warm", "rim") are unchanged. Checked and safe
without mirroring: the resize (uniform scale), the square crop (it keeps every side where it was; it can
cut away the lit part, never move it), the conversion to [-1, 1]. There is no vertical flip, rotation or
colour jitter: each would contradict "from above" or "warm". Limitation: the word swap is lexical, so
"right" meaning "correct" would be swapped too; relighting instructions rarely use it.

Randomness (crop corner, flip) is drawn from ``(seed, epoch, row index)``, so a resumed run sees the
same samples as an uninterrupted one, whatever the number of loader workers.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import numpy as np
import torch
from PIL import Image

from relightflow.images import image_seed

_SIDE = re.compile(r"\b(left|right)(?=(?:wards?|most|-hand)?\b)", re.IGNORECASE)
_MIRROR = {"left": "right", "right": "left"}


def mirror_text(text: str) -> str:
    """The instruction for the mirrored image: "left" and "right" swapped, case kept."""

    def swap(m: re.Match) -> str:
        word = m.group(1)
        new = _MIRROR[word.lower()]
        return new.upper() if word.isupper() else new.capitalize() if word[0].isupper() else new

    return _SIDE.sub(swap, text)


def _mirror_azimuths(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (
                round((180.0 - v) % 360.0, 6)
                if k == "azimuth" and isinstance(v, int | float)
                else _mirror_azimuths(v)
            )
            for k, v in value.items()
        }
    return [_mirror_azimuths(v) for v in value] if isinstance(value, list) else value


def mirror_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row's direction fields for the mirrored images: instruction, light direction, azimuths."""
    out = dict(row)
    if isinstance(out.get("edit_prompt"), str):
        out["edit_prompt"] = mirror_text(out["edit_prompt"])
    if out.get("light_direction") in _MIRROR:
        out["light_direction"] = _MIRROR[out["light_direction"]]
    params = out.get("degradation_params")
    if isinstance(params, str) and "azimuth" in params:
        out["degradation_params"] = json.dumps(_mirror_azimuths(json.loads(params)), sort_keys=True)
    return out


def resize_shorter(image: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side equals ``resolution`` (bicubic; keeps the aspect ratio)."""
    w, h = image.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    return image if size == (w, h) else image.resize(size, Image.Resampling.BICUBIC)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → float tensor CxHxW in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor`: HxWx3 uint8."""
    return ((t.permute(1, 2, 0).float().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def transform(row: dict[str, Any], resolution: int, rng: random.Random | None, flip: bool) -> dict[str, Any]:
    """One training sample of a row: aligned square crops, mirrored words when flipped.

    ``rng`` None: centre crop; ``flip`` mirrors the images and the row's direction fields together.
    """
    source, target = row["input_image"].convert("RGB"), row["edited_image"].convert("RGB")
    if source.size != target.size:
        source = source.resize(target.size, Image.Resampling.BICUBIC)
    original_size = (target.size[1], target.size[0])
    if flip:
        row = mirror_row(row)
        source = source.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        target = target.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    source, target = resize_shorter(source, resolution), resize_shorter(target, resolution)
    w, h = target.size
    top, left = (
        ((h - resolution) // 2, (w - resolution) // 2)
        if rng is None
        else (rng.randint(0, h - resolution), rng.randint(0, w - resolution))
    )
    box = (left, top, left + resolution, top + resolution)
    return {
        "source": to_tensor(source.crop(box)),
        "target": to_tensor(target.crop(box)),
        "prompt": row.get("edit_prompt") or "",
        "light_direction": row.get("light_direction"),
        "original_size": original_size,
        "crop_top_left": (top, left),
    }


class TripletDataset(torch.utils.data.Dataset):
    """An exported split as training samples; set ``epoch`` before each pass (it seeds the augmentation)."""

    def __init__(
        self,
        split_dir: str,
        resolution: int,
        center_crop: bool = False,
        random_flip: bool = False,
        seed: int = 0,
        limit: int | None = None,
    ):
        from relightflow.dataset import load_split

        self.rows = load_split(split_dir)
        if limit is not None:
            self.rows = self.rows.select(range(min(limit, len(self.rows))))
        self.resolution, self.center_crop, self.random_flip, self.seed = (
            resolution,
            center_crop,
            random_flip,
            seed,
        )
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = random.Random(image_seed(self.seed, str(i), "augment", self.epoch))
        flip = self.random_flip and rng.random() < 0.5
        return transform(self.rows[int(i)], self.resolution, None if self.center_crop else rng, flip)

    def prompts(self) -> list[str]:
        """Every instruction a sample can carry (mirrored ones too when flipping), sorted."""
        seen = {p or "" for p in self.rows.select_columns(["edit_prompt"])["edit_prompt"]}
        if self.random_flip:
            seen |= {mirror_text(p) for p in seen}
        return sorted(seen)


def latent_dataset(latents_dir: str):
    """Cached latents (written by :func:`relightflow.train.latents.cache_latents`) as a dataset."""
    import datasets

    from relightflow.dataset import data_files

    files = data_files(latents_dir)
    if not files:
        raise FileNotFoundError(f"no data-*.parquet in {latents_dir}")
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    return ds.with_transform(decode_latents)


def decode_latents(batch: dict[str, list]) -> dict[str, list]:
    """A ``datasets`` batch transform for cached latents: fp16 bytes → float tensors."""
    out: dict[str, list] = {"source_latent": [], "target_latent_params": []}
    for src, tgt, shape in zip(
        batch["input_latent"], batch["target_latent_params"], batch["latent_shape"], strict=True
    ):
        c, h, w = shape
        out["source_latent"].append(
            torch.from_numpy(np.frombuffer(src, np.float16).reshape(c, h, w).astype(np.float32))
        )
        out["target_latent_params"].append(
            torch.from_numpy(np.frombuffer(tgt, np.float16).reshape(2 * c, h, w).astype(np.float32))
        )
    out["prompt"] = list(batch["edit_prompt"])
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
