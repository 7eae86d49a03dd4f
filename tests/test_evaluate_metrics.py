"""Evaluation building blocks: PSNR/SSIM, LPIPS loading, instruction agreement, CLIP direction, summary, grids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relightflow.evaluate.grids import comparison_grid, save_grid
from relightflow.evaluate.instruction import (
    direction_agrees,
    instruction_following,
    load_clip,
    parse_direction,
    temperature_agrees,
)
from relightflow.evaluate.metrics import PSNR_CAP, image_metrics, load_lpips, psnr, ssim
from relightflow.evaluate.summary import plot_summary, summarize, write_html
from relightflow.images import load_rgb
from relightflow.testing import Scene, render_scene


def _noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def test_psnr_ssim_order_by_noise() -> None:
    target, _, _ = render_scene(Scene(size=64))
    assert psnr(target, target) == PSNR_CAP and ssim(target, target) == pytest.approx(1.0)
    small, large = image_metrics(_noisy(target, 3), target), image_metrics(_noisy(target, 25), target)
    assert 30 < small["psnr"] < 45 and 15 < large["psnr"] < 25
    assert small["ssim"] > large["ssim"]
    # known value: a constant error of 10 levels is 20*log10(255/10) dB
    assert psnr(np.full((8, 8, 3), 110, np.uint8), np.full((8, 8, 3), 100, np.uint8)) == pytest.approx(
        28.13, 0.01
    )
    assert 0 < ssim(target[:5, :5], _noisy(target, 20)[:5, :5]) < 1  # window shrinks for tiny images
    with pytest.raises(ValueError, match="shape mismatch"):
        image_metrics(target[:32], target)


def test_direction_and_temperature_parsing() -> None:
    assert parse_direction("upper left") == {"horizontal": "left", "vertical": "above"}
    assert parse_direction("Light from the RIGHT") == {"horizontal": "right"}
    assert parse_direction("front") == {"horizontal": "front"}
    assert parse_direction("behind the subject") == {"back": "back"}
    assert parse_direction(None) == {} and parse_direction("  ") == {} and parse_direction(float("nan")) == {}
    measured = {"horizontal": "left", "vertical": "level", "backlit": False, "color_temperature": "warm"}
    assert direction_agrees(measured, "left") is True
    assert direction_agrees(measured, "top left") is False  # vertical axis asked, not met
    assert direction_agrees(measured, "right") is False
    assert direction_agrees(measured, "back") is False
    assert direction_agrees(measured, None) is None
    assert temperature_agrees(measured, "warm") is True and temperature_agrees(measured, "cool") is False
    assert temperature_agrees(measured, "golden") is None and temperature_agrees(measured, None) is None


@pytest.mark.parametrize("side,temperature", [("left", "warm"), ("right", "cool")])
def test_instruction_following_on_rendered_light(side: str, temperature: str) -> None:
    image, _, _ = render_scene(Scene(horizontal=side, color_temperature=temperature, size=128))
    other = {"left": "right", "right": "left"}[side]
    good = instruction_following(image, side, temperature)
    assert good["direction_ok"] is True and good["temperature_ok"] is True
    assert good["measured_horizontal"] == side
    bad = instruction_following(image, other, "neutral")
    assert bad["direction_ok"] is False and bad["temperature_ok"] is False


def test_lpips_skips_without_local_weights_and_runs_with_them(tmp_path: Path, monkeypatch) -> None:
    assert load_lpips(False) == (None, "disabled in config (evaluate.lpips: false)")
    pytest.importorskip("lpips")
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    scorer, reason = load_lpips(True)
    assert scorer is None and "backbone weights not found locally" in reason
    # random AlexNet weights at the path torchvision reads: the same loading code a real checkpoint uses
    checkpoint = Path(reason.rsplit(": ", 1)[1])
    checkpoint.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), checkpoint)
    scorer, reason = load_lpips(True)
    assert reason is None
    target, _, _ = render_scene(Scene(size=64))
    assert scorer(target, target) == pytest.approx(0.0, abs=1e-6)
    assert scorer(_noisy(target, 40), target) > scorer(_noisy(target, 5), target) > 0


def test_clip_direction_with_tiny_open_clip(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    cfg = dict(embed_dim=32, vision_cfg=dict(image_size=64, layers=2, width=64, patch_size=16, head_width=32),
               text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))  # fmt: skip
    config = tmp_path / "rf-tiny-clip.json"
    config.write_text(json.dumps(cfg))
    assert load_clip({})[0] is None and "no CLIP model" in load_clip({"model": None})[1]
    scorer, reason = load_clip({"model": str(config)})
    assert reason is None
    a, _, _ = render_scene(Scene(horizontal="front", size=64))
    b, _, _ = render_scene(Scene(horizontal="left", size=64))
    scores = scorer.score([a, a], [b, a], [b, b], ["light from the left", "light from the left"])
    assert -1 <= scores[0]["clip_direction"] <= 1 and scores[0]["clip_image"] == pytest.approx(1.0, abs=1e-5)
    assert scores[1]["clip_direction"] == pytest.approx(0.0, abs=1e-5)  # no edit: zero image direction


def _frame() -> pd.DataFrame:
    rows = []
    for i, (deg, side) in enumerate([("flat", "left"), ("flat", "right"), ("low_key", "left")]):
        base = {"key": f"k{i}", "degradation": deg, "light_direction": side, "color_temperature": "warm"}
        rows.append({**base, "system": "model", "psnr": 20.0 + i, "ssim": 0.5, "direction_ok": i != 1,
                     "temperature_ok": None})  # fmt: skip
        rows.append({**base, "system": "identity", "psnr": 10.0, "ssim": 0.4, "direction_ok": False,
                     "temperature_ok": True})  # fmt: skip
        rows.append({**base, "system": "target", "direction_ok": True, "temperature_ok": True})
    return pd.DataFrame(rows)


def test_summary_by_system_and_group(tmp_path: Path) -> None:
    summary = summarize(_frame(), ["model", "identity", "target"], {"seed": 1})
    model = summary["metrics"]["model"]
    assert summary["n_images"] == 3 and summary["seed"] == 1
    assert model == {"n": 3, "psnr": 21.0, "ssim": 0.5, "direction_agreement": pytest.approx(2 / 3, 1e-4)}
    assert (
        "psnr" not in summary["metrics"]["target"]
        and summary["metrics"]["target"]["direction_agreement"] == 1
    )
    assert summary["by_degradation"]["flat"]["model"]["psnr"] == 20.5
    assert summary["by_degradation"]["low_key"]["identity"]["temperature_agreement"] == 1.0
    assert set(summary["by_light_direction"]) == {"left", "right"}
    json.dumps(summary, allow_nan=False)  # strict JSON: no NaN leaks in
    write_html(tmp_path / "m.html", summary, ["a note"])
    html = (tmp_path / "m.html").read_text()
    assert "By degradation" in html and "a note" in html and html.count("<table") == 4
    plot_summary(tmp_path / "m.png", summary)
    assert load_rgb(tmp_path / "m.png").std() > 10


def test_grid_layout_and_empty_notice(tmp_path: Path) -> None:
    image, _, _ = render_scene(Scene(size=64))
    grid = comparison_grid(
        [[image, image, image]] * 2, ["make it warm " * 20, "x"], ["input", "model", "target"], 100
    )
    assert grid.shape[1] == 3 * 104 + 4 and grid.shape[0] > 2 * 100
    assert (grid[:, :, 0] < 100).mean() > 0.01  # images and text drawn
    save_grid(tmp_path / "empty.png", [], [], ["input"])
    assert load_rgb(tmp_path / "empty.png").min() < 128  # the notice text is drawn
