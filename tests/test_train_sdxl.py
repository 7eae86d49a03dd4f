"""InstructPix2Pix trainer on a tiny SDXL-layout model: two text encoders, micro-conditioning, saved pipeline."""

from __future__ import annotations

import json

import numpy as np
import torch

from relightflow.testing.tiny_sd import export_fixture_split, overfit_config, save_tiny_pipeline
from relightflow.train.config import TrainPaths
from relightflow.train.ip2p import sdxl_time_ids
from relightflow.train.launch import train

RES = 64


def test_time_ids_carry_original_size_and_crop() -> None:
    batch = {"original_size": [(96, 80), (64, 64)], "crop_top_left": [(16, 0), (0, 0)]}
    ids = sdxl_time_ids(batch, RES, "cpu", torch.float32)
    assert ids.tolist() == [[96, 80, 16, 0, 64, 64], [64, 64, 0, 0, 64, 64]]


def test_sdxl_overfits_and_saves_a_loadable_pipeline(tmp_path) -> None:
    from diffusers import StableDiffusionXLInstructPix2PixPipeline
    from PIL import Image

    torch.set_num_threads(1)
    data = export_fixture_split(tmp_path, n_images=4, resolution=RES)
    base = save_tiny_pipeline(tmp_path / "base", "sdxl", RES, instruct=False)
    paths = TrainPaths(
        train_data=str(data), output_dir=str(tmp_path / "model"), work_dir=str(tmp_path / "work")
    )
    cfg = overfit_config(
        base, "sdxl", RES, conditioning_dropout_prob=0.05, use_ema=False, num_validation_images=1,
        validation_loss_samples=0,
    )
    out = train(cfg, paths)

    values = [json.loads(line)["loss"] for line in paths.loss_log.read_text().splitlines()]
    assert len(values) == 12 and np.mean(values[-3:]) < 0.7 * np.mean(values[:3]), values
    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.unet.config.in_channels == 8 and pipe.vae.dtype == torch.float32
    image = Image.new("RGB", (RES, RES), (90, 60, 40))
    result = pipe("warm light from the right", image=image, num_inference_steps=2, output_type="np").images[0]
    assert result.shape == (RES, RES, 3) and np.isfinite(result).all()
