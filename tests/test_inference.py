"""One inference path: sizes, seeds, saved settings and overrides; the CLI and evaluate give identical pixels
for every model family (tiny SD1.5, SDXL and Flux Kontext LoRA folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from relightflow import cli, inference
from relightflow.config import section
from relightflow.dataset import export_split, load_split
from relightflow.evaluate import evaluate_split
from relightflow.images import load_rgb, save_image
from relightflow.testing.tiny_sd import build_tiny_pipeline, write_triplet_fixture

SIZE, RES = 48, 32  # images are 48 px, models run at 32: both resizes of the rule are exercised


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_model_size_keeps_aspect_in_multiples() -> None:
    assert inference.model_size(1024, 768, 512, 8) == (680, 512)
    assert inference.model_size(1024, 768, 512, 16) == (688, 512)
    assert inference.model_size(50, 70, None, 8) == (48, 72)
    assert inference.model_size(30, 300, 64, 8) == (64, 640)
    assert inference.model_size(3, 3, None, 4) == (4, 4)


def test_noise_depends_on_the_seed_and_pixels_only() -> None:
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 1
    assert inference.noise_seed(0, a) == inference.noise_seed(0, a.copy())
    assert len({inference.noise_seed(0, a), inference.noise_seed(1, a), inference.noise_seed(0, b)}) == 3
    assert inference.noise_seed(0, a) != inference.noise_seed(0, a.reshape(4, 16, 3))


def test_saved_settings_apply_unless_overridden(tmp_path: Path) -> None:
    pipe = build_tiny_pipeline("sd15", 64)
    plain = inference.pipeline_settings(pipe)
    assert (plain.family, plain.resolution, plain.size_multiple, plain.num_inference_steps) == (
        "sd15",
        64,
        2,
        20,
    )
    saved = inference.pipeline_settings(pipe, num_inference_steps=3, guidance_scale=2.0, resolution=RES)
    inference.write_settings(tmp_path, saved)
    loaded = inference.read_settings(tmp_path)
    assert loaded == saved and inference.read_settings(tmp_path / "none") is None
    over = loaded.with_overrides({"num_inference_steps": None, "guidance_scale": 5.0, "seed": 3})
    assert (over.num_inference_steps, over.guidance_scale, over.resolution) == (3, 5.0, RES)


def sd_folder(root: Path, kind: str) -> Path:
    pipe = build_tiny_pipeline(kind, RES)
    pipe.save_pretrained(root)
    inference.write_settings(
        root,
        inference.pipeline_settings(
            pipe, num_inference_steps=2, guidance_scale=3.0, image_guidance_scale=1.2, resolution=RES
        ),
    )
    return root


def flux_folder(root: Path) -> Path:
    """A Flux Kontext LoRA folder as the trainer writes it: LoRA weights + settings naming the base."""
    from peft import LoraConfig

    from relightflow.testing.tiny_flux import build_tiny_flux_kontext, save_tiny_flux_kontext
    from relightflow.train.flux_kontext import save_lora

    base = save_tiny_flux_kontext(root / "base")
    pipe = build_tiny_flux_kontext()
    pipe.transformer.add_adapter(
        LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=["to_q", "to_v"])
    )
    save_lora(root / "lora", pipe.transformer)
    settings = inference.pipeline_settings(
        pipe,
        base_model=str(base),
        lora_weights=inference.LORA_WEIGHTS,
        num_inference_steps=2,
        guidance_scale=3.0,
        resolution=RES,
        max_sequence_length=16,
    )
    inference.write_settings(root / "lora", settings)
    return root / "lora"


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("split")
    up = write_triplet_fixture(root / "up", n_images=2, size=SIZE, splits=("test",))
    export_split(
        "test",
        up["selection"],
        up["pairs"],
        up["captions"],
        root / "test",
        root / "s.json",
        root / "r.parquet",
        {"resolution": SIZE},
    )
    return root / "test"


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux-kontext"])
def test_cli_and_evaluate_give_identical_pixels(family: str, split: Path, tmp_path: Path) -> None:
    model = (
        flux_folder(tmp_path / "flux") if family == "flux-kontext" else sd_folder(tmp_path / family, family)
    )
    cfg = section("evaluate", lpips=False, batch_size=2, grid_rows=1)
    summary = evaluate_split(
        split,
        model,
        {
            k: str(tmp_path / "eval" / k)
            for k in ("metrics", "table", "html", "plot", "grid", "predictions", "rejects", "stats")
        },
        cfg,
        seed=42,
        device="cpu",
    )
    assert summary["n_images"] == 2 and summary["params"]["num_inference_steps"] == 2
    assert (
        summary["params"]["guidance_scale"] == 3.0 and summary["params"]["resolution"] == RES
    )  # the saved ones

    rows = [
        {
            "image_id": f"{r['image_id']}_v0",
            "input_path": str(tmp_path / "in" / f"{r['image_id']}.png"),
            "instruction": r["edit_prompt"],
        }
        for r in load_split(split)
    ]
    for row, data in zip(rows, load_split(split), strict=True):
        save_image(row["input_path"], np.asarray(data["input_image"]))
    pd.DataFrame(rows).to_parquet(tmp_path / "manifest.parquet")
    assert (
        cli.main(
            [
                "relight",
                "--model",
                str(model),
                "--manifest",
                str(tmp_path / "manifest.parquet"),
                "--output",
                str(tmp_path / "cli"),
                "--seed",
                "42",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    for i, row in enumerate(rows):
        by_cli = load_rgb(tmp_path / "cli" / f"{row['image_id']}_{i}.png")
        by_eval = load_rgb(tmp_path / "eval" / "predictions" / "model" / f"{row['image_id']}.png")
        assert by_cli.shape == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(by_cli, by_eval)


def test_overrides_change_the_output(split: Path, tmp_path: Path) -> None:
    model = sd_folder(tmp_path / "m", "sd15")
    image = np.asarray(load_split(split)[0]["input_image"])
    saved = inference.load(model, "cpu")
    assert saved.settings.num_inference_steps == 2
    fewer = inference.load(model, "cpu", {"guidance_scale": 9.0, "resolution": 16}, keep_model_size=True)
    out = fewer(image, "warm light from the left")
    assert out.shape == (16, 16, 3)  # the overridden resolution, kept
    assert not np.array_equal(saved(image, "x"), saved(image, "y"))  # the prompt matters
    np.testing.assert_array_equal(saved(image, "x"), saved(image, "x"))  # same seed, same pixels
