"""``relightflow relight``: folder and manifest modes, broken inputs, sizes back at the input's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from relightflow import cli, inference, relight
from relightflow.images import save_image
from relightflow.testing.tiny_sd import save_tiny_pipeline


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return save_tiny_pipeline(tmp_path_factory.mktemp("m") / "ip2p", "sd15", 64)


def test_relight_folder_via_cli(model: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    rng = np.random.default_rng(0)
    save_image(src / "a.png", rng.integers(0, 255, (70, 50, 3), dtype=np.uint8))
    save_image(src / "sub" / "b.jpg", rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    (src / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    args = ["relight", "--model", str(model), "--input", str(src), "--prompt", "warm light from the left",
            "--output", str(out), "--steps", "2", "--resolution", "64", "--seed", "3"]  # fmt: skip
    assert cli.main(args) == 0
    assert Image.open(out / "a.png").size == (50, 70)  # back at the input size
    assert Image.open(out / "sub" / "b.png").size == (96, 64)
    assert not (out / "broken.png").exists()
    first = np.asarray(Image.open(out / "a.png"))
    cli.main(args)  # same seed, same result
    np.testing.assert_array_equal(first, np.asarray(Image.open(out / "a.png")))


def test_relight_manifest(model: Path, tmp_path: Path) -> None:
    save_image(tmp_path / "x.png", np.full((64, 64, 3), 120, np.uint8))
    manifest = tmp_path / "m.parquet"
    pd.DataFrame({"image_id": ["x", "y"], "input_path": [str(tmp_path / "x.png"), str(tmp_path / "missing.png")],
                  "instruction": ["cool light from above", "soft light"]}).to_parquet(manifest)  # fmt: skip
    relighter = inference.load(model, "cpu", {"num_inference_steps": 2, "resolution": 32}, keep_model_size=True)
    results = relight.relight_manifest(relighter, manifest, tmp_path / "out")
    assert [r["error"] is None for r in results] == [True, False]
    assert Image.open(tmp_path / "out" / "x_0.png").size == (32, 32)  # the model's size, kept
    assert len(pd.read_csv(tmp_path / "out" / "relit.csv")) == 2
