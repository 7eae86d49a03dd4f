"""InstructPix2Pix trainer on a tiny SD1.5-layout model: surgery, dropout, overfit, EMA, saved pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from relightflow.testing.tiny_sd import export_fixture_split, overfit_config, save_tiny_pipeline
from relightflow.train.config import TrainPaths
from relightflow.train.ip2p import Trainer, train, widen_conv_in

RES = 64


def losses(paths: TrainPaths) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, paths.loss_log.read_text().splitlines())]


def tiny_paths(root: Path, data: Path, **kw) -> TrainPaths:
    return TrainPaths(train_data=str(data), output_dir=str(root / "model"), work_dir=str(root / "work"), **kw)


def test_widen_conv_in_zero_init() -> None:
    from relightflow.testing.tiny_sd import tiny_unet

    unet = tiny_unet("sd15", RES, in_channels=4)
    old = unet.conv_in.weight.detach().clone()
    widen_conv_in(unet)
    assert unet.conv_in.in_channels == 8 and unet.config.in_channels == 8
    torch.testing.assert_close(unet.conv_in.weight[:, :4], old)
    assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0


def test_conditioning_dropout_rates() -> None:
    trainer = Trainer.__new__(Trainer)
    trainer.cfg = overfit_config("unused", conditioning_dropout_prob=0.05)
    n = 40000
    trainer.null_text = (torch.zeros(1, 3, 2), None)
    states, _, source = trainer._dropout(torch.ones(n, 3, 2), None, torch.ones(n, 4, 2, 2))
    text_dropped = states[:, 0, 0] == 0
    image_dropped = source[:, 0, 0, 0] == 0
    assert abs(text_dropped.float().mean() - 0.10) < 0.01  # 2p
    assert abs(image_dropped.float().mean() - 0.10) < 0.01  # 2p
    assert abs((text_dropped & image_dropped).float().mean() - 0.05) < 0.01  # p


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("sd15")
    torch.set_num_threads(1)
    data = export_fixture_split(root, n_images=4, resolution=RES)
    base = save_tiny_pipeline(
        root / "base", "sd15", RES, instruct=False
    )  # 4-channel UNet, widened by training
    paths = tiny_paths(root, data, val_data=str(data))
    out = train(overfit_config(base, "sd15", RES, use_ema=True), paths)
    return out, paths


def test_loss_decreases_on_overfit_set(trained) -> None:
    _, paths = trained
    record = losses(paths)
    assert [s for s, _ in record] == list(range(1, 13))
    values = [v for _, v in record]
    first, last = np.mean(values[:3]), np.mean(values[-3:])
    assert last < 0.7 * first, record


def test_ema_weights_differ_from_raw(trained) -> None:
    out, paths = trained
    ema = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    raw = load_file(paths.checkpoints / "checkpoint-12" / "model.safetensors")
    key = "conv_in.weight"
    assert ema[key].shape == raw[key].shape == (32, 8, 3, 3)
    assert not torch.allclose(ema[key], raw[key])
    assert torch.count_nonzero(ema[key][:, 4:]) > 0  # the new image channels learned
    assert [p.name for p in paths.checkpoints.iterdir()] == ["checkpoint-12"]  # total limit 1


def test_saved_pipeline_loads_and_relights(trained) -> None:
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    out, paths = trained
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.unet.config.in_channels == 8
    image = Image.new("RGB", (RES, RES), (90, 60, 40))
    result = pipe("soft light from the left", image=image, num_inference_steps=2, output_type="np").images[0]
    assert result.shape == (RES, RES, 3) and np.isfinite(result).all()
    grid = Image.open(paths.validation / "step-0000012.png")
    assert grid.size == (3 * RES, 2 * RES)  # input | prediction | target, 2 rows
    assert (Path(paths.work_dir) / "loss_curve.png").stat().st_size > 1000
