"""Cache VAE latents of an exported split at the training resolution, so training skips the encoder.

Each row keeps the input image's latent (distribution mode, as the trainer uses it) and the target's
latent distribution (mean and log-variance, so training still samples it), both fp16, centre-cropped
at the training resolution. Augmentations (random crop, flip) are therefore off with cached latents.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from relightflow.dataset import RollingParquetWriter, _fresh_tmp, data_files, replace_dir
from relightflow.devices import pick_device
from relightflow.images import load_rgb
from relightflow.train.data import transform

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("variant", pa.int32()),
        ("edit_prompt", pa.string()),
        ("input_latent", pa.binary()),
        ("target_latent_params", pa.binary()),
        ("latent_shape", pa.list_(pa.int32())),
        ("original_size", pa.list_(pa.int32())),
        ("crop_top_left", pa.list_(pa.int32())),
    ]
)


def load_vae(pretrained: str, vae: str | None, device: str):
    """The training VAE (``vae`` overrides the pipeline's); fp32 unless a GPU and no forced upcast."""
    import torch
    from diffusers import AutoencoderKL

    model = (
        AutoencoderKL.from_pretrained(vae)
        if vae
        else AutoencoderKL.from_pretrained(pretrained, subfolder="vae")
    )
    dtype = torch.float16 if device.startswith("cuda") and not model.config.force_upcast else torch.float32
    model = model.to(device) if dtype == torch.float32 else model.to(device, dtype=dtype)
    return model.eval().requires_grad_(False)


def _decode(cell: dict) -> Image.Image:
    return Image.fromarray(load_rgb(cell["bytes"]))


def _encode_batch(vae, rows: list[dict], resolution: int) -> list[dict]:
    import torch

    items = [
        transform(
            {**r, "input_image": _decode(r["input_image"]), "edited_image": _decode(r["edited_image"])},
            resolution,
            None,
            False,
        )
        for r in rows
    ]
    source = torch.stack([i["source"] for i in items]).to(vae.device, vae.dtype)
    target = torch.stack([i["target"] for i in items]).to(vae.device, vae.dtype)
    with torch.no_grad():
        source_latents = vae.encode(source).latent_dist.mode().half().cpu().numpy()
        target_params = vae.encode(target).latent_dist.parameters.half().cpu().numpy()
    out = []
    for row, item, src, tgt in zip(rows, items, source_latents, target_params, strict=True):
        out.append(
            {
                "image_id": row["image_id"],
                "variant": row["variant"],
                "edit_prompt": row["edit_prompt"],
                "input_latent": np.ascontiguousarray(src).tobytes(),
                "target_latent_params": np.ascontiguousarray(tgt).tobytes(),
                "latent_shape": list(src.shape),
                "original_size": list(item["original_size"]),
                "crop_top_left": list(item["crop_top_left"]),
            }
        )
    return out


def cache_latents(
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    pretrained: str,
    resolution: int,
    vae: str | None = None,
    batch_size: int = 16,
    rows_per_file: int = 2000,
    device: str | None = None,
) -> int:
    """Encode every row of the split in ``dataset_dir`` into ``out_dir/data-*.parquet``; return the count."""

    device = pick_device(device)
    model = load_vae(pretrained, vae, device)
    out = Path(out_dir)
    tmp = _fresh_tmp(out)
    writer = RollingParquetWriter(tmp, SCHEMA, rows_per_file, row_group_size=256)
    n = 0
    for path in data_files(dataset_dir):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            for row in _encode_batch(model, batch.to_pylist(), resolution):
                writer.add(row)
                n += 1
    writer.close()
    replace_dir(tmp, out)
    log.info("cached latents of %d rows at %d px in %s (%s)", n, resolution, out, device)
    return n
