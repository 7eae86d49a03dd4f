"""Cached VAE latents (what training reads instead of pixels) and LoRA training merged into a plain UNet."""

from __future__ import annotations

import numpy as np
import torch

from relightflow.dataset import load_split
from relightflow.testing.tiny_sd import export_fixture_split, overfit_config, save_tiny_pipeline
from relightflow.train.config import TrainPaths
from relightflow.train.data import latent_dataset
from relightflow.train.latents import cache_latents, load_vae
from relightflow.train.launch import train

RES = 64


def test_cached_latents_match_the_vae_and_train_with_lora(tmp_path) -> None:
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    data = export_fixture_split(tmp_path, n_images=4, resolution=RES)
    base = save_tiny_pipeline(tmp_path / "base", "sd15", RES, instruct=False)
    assert cache_latents(data, tmp_path / "latents", str(base), RES, batch_size=3, device="cpu") == 4

    cached = latent_dataset(str(tmp_path / "latents"))
    row, first = cached[0], load_split(data)[0]
    assert row["source_latent"].shape == (4, RES // 2, RES // 2) and row["target_latent_params"].shape[0] == 8
    assert row["prompt"] == first["edit_prompt"] and tuple(row["original_size"]) == (RES, RES)
    vae = load_vae(str(base), None, "cpu")
    pixels = torch.from_numpy(np.asarray(first["input_image"], np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    expected = vae.encode(pixels).latent_dist.mode()[0]
    torch.testing.assert_close(row["source_latent"], expected, atol=2e-2, rtol=1e-2)  # fp16 storage

    paths = TrainPaths(
        train_data=str(data), latents=str(tmp_path / "latents"), output_dir=str(tmp_path / "model"),
        work_dir=str(tmp_path / "work"),
    )  # fmt: skip
    cfg = overfit_config(base, "sd15", RES, max_steps=4, lora_rank=4, num_validation_images=0, validation_loss_samples=0)
    out = train(cfg, paths)
    weights = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in weights)  # merged: loads without peft
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(out, local_files_only=True)
    original = load_file(base / "unet" / "diffusion_pytorch_model.safetensors")
    key = next(k for k in original if k.endswith("attn1.to_q.weight"))
    assert not torch.allclose(pipe.unet.state_dict()[key], original[key])  # the LoRA delta was merged
