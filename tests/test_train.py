"""The trainer contract on a tiny SD1.5-layout model: surgery, dropout, overfit, EMA, outputs, validation
grids through the inference path; samples whose geometry and words agree; fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from relightflow import inference
from relightflow.testing.tiny_sd import export_fixture_split, overfit_config, save_tiny_pipeline
from relightflow.train import checkpoints as ckpt
from relightflow.train.config import TrainPaths
from relightflow.train.data import TripletDataset, mirror_row, mirror_text, to_uint8, transform
from relightflow.train.ip2p import IP2PTrainer, widen_conv_in
from relightflow.train.launch import accelerate_command, train

RES = 64


def losses(paths: TrainPaths) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, paths.loss_log.read_text().splitlines())]


def test_widen_conv_in_zero_init() -> None:
    from relightflow.testing.tiny_sd import tiny_unet

    unet = tiny_unet("sd15", RES, in_channels=4)
    old = unet.conv_in.weight.detach().clone()
    widen_conv_in(unet)
    assert unet.conv_in.in_channels == 8 and unet.config.in_channels == 8
    torch.testing.assert_close(unet.conv_in.weight[:, :4], old)
    assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0


def test_conditioning_dropout_rates() -> None:
    trainer = IP2PTrainer.__new__(IP2PTrainer)
    trainer.cfg = overfit_config("unused", conditioning_dropout_prob=0.05)
    n = 40000
    trainer.null_text = (torch.zeros(1, 3, 2), None)
    generator = torch.Generator().manual_seed(0)
    states, _, source = trainer._dropout(torch.ones(n, 3, 2), None, torch.ones(n, 4, 2, 2), generator)
    text_dropped = states[:, 0, 0] == 0
    image_dropped = source[:, 0, 0, 0] == 0
    assert abs(text_dropped.float().mean() - 0.10) < 0.01  # 2p
    assert abs(image_dropped.float().mean() - 0.10) < 0.01  # 2p
    assert abs((text_dropped & image_dropped).float().mean() - 0.05) < 0.01  # p


def test_mirror_text_swaps_sides_only() -> None:
    assert (
        mirror_text("soft light from the upper left, warm tone")
        == "soft light from the upper right, warm tone"
    )
    assert mirror_text("Right-hand window light, LEFT rim") == "Left-hand window light, RIGHT rim"
    assert mirror_text("bright light from the leftmost lamp") == "bright light from the rightmost lamp"
    assert (
        mirror_text("warm light from the top, lighting the front")
        == "warm light from the top, lighting the front"
    )
    row = {
        "edit_prompt": "light from the left",
        "light_direction": "left",
        "degradation_params": json.dumps({"light": {"azimuth": 20.0, "elevation": 30.0}, "exposure": 0.5}),
    }
    mirrored = mirror_row(row)
    assert mirrored["edit_prompt"] == "light from the right" and mirrored["light_direction"] == "right"
    assert json.loads(mirrored["degradation_params"])["light"] == {"azimuth": 160.0, "elevation": 30.0}
    twice = mirror_row(mirrored)  # mirroring twice is the identity
    assert twice["edit_prompt"] == row["edit_prompt"] and twice["light_direction"] == "left"
    assert json.loads(twice["degradation_params"]) == json.loads(row["degradation_params"])


def test_a_flipped_sample_says_the_mirrored_side(tmp_path: Path) -> None:
    data = export_fixture_split(tmp_path, n_images=4, resolution=32)
    plain = TripletDataset(str(data), 32, center_crop=True)
    flipping = TripletDataset(str(data), 32, center_crop=True, random_flip=True, seed=1)
    flipped = kept = 0
    for epoch in range(3):
        flipping.epoch = epoch
        for i in range(len(plain)):
            a, b = plain[i], flipping[i]
            if torch.equal(a["target"], b["target"]):
                assert b["prompt"] == a["prompt"] and b["light_direction"] == a["light_direction"]
                kept += 1
                continue
            torch.testing.assert_close(b["target"], a["target"].flip(-1))  # the images are mirrored ...
            torch.testing.assert_close(b["source"], a["source"].flip(-1))
            assert b["prompt"] == mirror_text(a["prompt"]) != a["prompt"]  # ... and so are the words
            assert {a["light_direction"], b["light_direction"]} == {"left", "right"}
            flipped += 1
    assert flipped and kept  # both happen, and the same (seed, epoch, row) always draws the same
    assert flipping.prompts() == sorted({*plain.prompts(), *map(mirror_text, plain.prompts())})
    assert TripletDataset(str(data), 32).random_flip is False  # off unless asked for


def test_random_crop_keeps_sides_and_pairs_aligned() -> None:
    import random

    source = Image.fromarray(np.arange(40 * 60 * 3, dtype=np.uint32).reshape(40, 60, 3).astype(np.uint8))
    row = {"input_image": source, "edited_image": source, "edit_prompt": "light from the left"}
    sample = transform(row, 20, random.Random(0), flip=False)
    assert torch.equal(sample["source"], sample["target"]) and sample["prompt"] == "light from the left"
    top, left = sample["crop_top_left"]
    full = np.asarray(source.resize((30, 20), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(to_uint8(sample["target"]), full[top : top + 20, left : left + 20])


def test_fingerprint_mismatch_says_why(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "unet").mkdir(parents=True)
    (base / "unet" / "config.json").write_text('{"a": 1}')
    first = ckpt.model_identity(str(base))
    assert first == ckpt.model_identity(str(base)) and first["digest"]
    (base / "unet" / "config.json").write_text('{"a": 2}')
    assert ckpt.model_identity(str(base))["digest"] != first["digest"]
    assert ckpt.model_identity("org/not-cached") == {"id": "org/not-cached", "digest": None}
    old = {
        "config": {"learning_rate": 1e-3, "seed": 0},
        "models": [first],
        "data": {"data-00000.parquet": "a"},
    }
    assert ckpt.mismatch(old, old) == ""
    new = {**old, "config": {"learning_rate": 5e-4, "seed": 0}, "data": {"data-00000.parquet": "b"}}
    why = ckpt.mismatch(old, new)
    assert (
        "learning_rate 0.001 -> 0.0005" in why
        and "training data changed (1 file(s)" in why
        and "seed" not in why
    )
    assert "no fingerprint" in ckpt.mismatch({}, new)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, TrainPaths]:
    root = tmp_path_factory.mktemp("sd15")
    torch.set_num_threads(1)
    data = export_fixture_split(root, n_images=4, resolution=RES)
    base = save_tiny_pipeline(
        root / "base", "sd15", RES, instruct=False
    )  # 4-channel UNet, widened by training
    paths = TrainPaths(
        train_data=str(data), output_dir=str(root / "model"), work_dir=str(root / "work"), val_data=str(data)
    )
    out = train(overfit_config(base, "sd15", RES, use_ema=True, validation_loss_samples=4), paths)
    return out, paths


def test_loss_decreases_on_overfit_set(trained) -> None:
    _, paths = trained
    record = losses(paths)
    assert [s for s, _ in record] == list(range(1, 13))
    values = [v for _, v in record]
    assert np.mean(values[-3:]) < 0.7 * np.mean(values[:3]), record
    summary = json.loads(paths.summary.read_text())
    assert summary["steps"] == 12 and [s for s, _ in summary["val_losses"]] == [0, 12]
    assert summary["val_loss_final"] < 0.7 * summary["val_loss_initial"]
    assert paths.loss_curve.stat().st_size > 1000


def test_ema_weights_differ_from_raw(trained) -> None:
    out, paths = trained
    ema = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    raw = load_file(paths.checkpoints / "checkpoint-12" / "model.safetensors")
    key = "conv_in.weight"
    assert ema[key].shape == raw[key].shape == (32, 8, 3, 3)
    assert not torch.allclose(ema[key], raw[key])
    assert torch.count_nonzero(ema[key][:, 4:]) > 0  # the new image channels learned
    assert [p.name for p in paths.checkpoints.iterdir()] == ["checkpoint-12"]  # total limit 1
    state = ckpt.read_state(paths.checkpoints / "checkpoint-12")
    assert state.step == 12 and state.fingerprint["config"]["learning_rate"] == 1e-3


def test_the_model_folder_relights_like_its_validation_grid(trained) -> None:
    """The saved model, loaded by the inference module, reproduces the final validation grid's prediction."""
    out, paths = trained
    settings = inference.read_settings(out)
    assert (settings.family, settings.resolution, settings.num_inference_steps, settings.steps) == (
        "sd15",
        RES,
        2,
        12,
    )
    assert (out / "README.md").read_text().startswith("---") and (out / "model_index.json").exists()
    grid = np.asarray(Image.open(paths.validation / "step-0000012.png"))
    assert grid.shape == (2 * RES, 3 * RES, 3)  # input | prediction | target, 2 rows
    relight = inference.load(out, "cpu", seed=0)
    prompt = TripletDataset(paths.val_data, RES, center_crop=True)[0]["prompt"]
    np.testing.assert_array_equal(relight(grid[:RES, :RES], prompt), grid[:RES, RES : 2 * RES])


def test_accelerate_command_follows_the_gpu_count(tmp_path: Path) -> None:
    cpu = accelerate_command(tmp_path / "job.json", 0, "fp16")
    assert "--cpu" in cpu and cpu[cpu.index("--num_processes") + 1] == "1"
    assert cpu[cpu.index("--mixed_precision") + 1] == "no"  # no fp16 autocast on a CPU
    multi = accelerate_command(tmp_path / "job.json", 4, "bf16")
    assert (
        "--multi_gpu" in multi and multi[multi.index("--num_processes") + 1] == "4" and "--cpu" not in multi
    )
    assert multi[-4:] == ["-m", "relightflow.train", "--job", str(tmp_path / "job.json")]
