"""Evaluation building blocks: PSNR/SSIM against known values, LPIPS loading, instruction agreement on scenes
relit in a known direction, the sign of the CLIP direction score, summary, grids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relightflow.config import section
from relightflow.evaluate.grids import comparison_grid, save_grid
from relightflow.evaluate.instruction import (
    ClipDirection,
    Measurement,
    direction_agrees,
    instruction_following,
    load_clip,
    parse_direction,
    temperature_agrees,
)
from relightflow.evaluate.metrics import PSNR_CAP, image_metrics, load_lpips, psnr, ssim
from relightflow.evaluate.summary import plot_summary, summarize, write_html
from relightflow.images import load_rgb, resize_longer_side
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


@pytest.mark.parametrize("d", [1, 3, 10, 40])
def test_psnr_of_a_constant_offset_is_20_log10_255_over_d(d: int) -> None:
    target = _noisy(np.full((24, 32, 3), 120, np.uint8), 20, seed=d)
    brighter = np.clip(target.astype(int) + d, 0, 255).astype(np.uint8)
    assert np.abs(brighter.astype(int) - target).max() == d  # no clipping: the error is d everywhere
    assert psnr(brighter, target) == pytest.approx(20 * np.log10(255 / d), abs=0.02)


@pytest.mark.parametrize("a,b", [(100, 120), (30, 200), (128, 129)])
def test_ssim_of_flat_images_is_the_luminance_term(a: int, b: int) -> None:
    """Flat images have no contrast or structure: SSIM = (2ab + C1) / (a² + b² + C1), C1 = (0.01·255)²."""
    c1 = (0.01 * 255) ** 2
    flat_a, flat_b = np.full((16, 16, 3), a, np.uint8), np.full((16, 16, 3), b, np.uint8)
    assert ssim(flat_a, flat_b) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-9)
    assert ssim(flat_a, flat_a) == pytest.approx(1.0)


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


def _relit(side: str, wall_side: str, size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A subject lit from ``side`` in front of the wall of a scene lit from ``wall_side``, and its mask."""
    subject, mask, _ = render_scene(Scene(horizontal=side, size=size, seed=seed))
    wall, _, _ = render_scene(Scene(horizontal=wall_side, size=size, seed=seed))
    return np.where(mask[..., None], subject, wall), mask


@pytest.mark.parametrize("seed", [0, 1])
def test_agreement_with_the_captions_mask_on_scenes_relit_in_a_known_direction(seed: int) -> None:
    """Target lit from the left (its wall from the right, as in a photo with a bright window behind): a
    prediction lit from the left agrees, from the right disagrees — measured with the caption's mask. Without
    the mask the frame's wall decides, and the target itself would contradict its own instruction."""
    target, mask = _relit("left", "right", seed=seed)
    measurement = Measurement(mask, side=128)
    assert instruction_following(target, "left", None, measurement)["direction_ok"] is True
    assert instruction_following(target, "left", None)["direction_ok"] is False  # unmasked: the wall wins
    for side, expected in (("left", True), ("right", False)):
        prediction, _ = _relit(side, "right", seed=seed + 10)
        got = instruction_following(prediction, "left", None, measurement)
        assert got["direction_ok"] is expected and got["measured_with_mask"] is True
        assert got["measured_horizontal"] == side


def test_measurement_works_at_the_captions_size() -> None:
    image, mask, _ = render_scene(Scene(horizontal="right", size=200))
    small = resize_longer_side(image, 64)
    assert small.shape[:2] == (64, 64) and resize_longer_side(small, 200).shape[:2] == (200, 200)
    assert resize_longer_side(image, None) is image and resize_longer_side(image, 200) is image
    # a 64 px export measured at the caption's 200 px with the caption's (200 px) mask
    assert Measurement(mask, 200)(small)["horizontal"] == "right"


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
    scorer, reason = load_clip(section("evaluate", clip={"model": str(config)})["clip"])
    assert reason is None
    a, _, _ = render_scene(Scene(horizontal="front", size=64))
    b, _, _ = render_scene(Scene(horizontal="left", size=64))
    scores = scorer.score([a, a], [b, a], [b, b], ["light from the left", "light from the left"])
    assert -1 <= scores[0]["clip_direction"] <= 1 and scores[0]["clip_image"] == pytest.approx(1.0, abs=1e-5)
    assert scores[1]["clip_direction"] == pytest.approx(0.0, abs=1e-5)  # no edit: zero image direction


class ColourClip:
    """A CLIP-like model with hand-set embeddings: an image embeds as [mean red - mean blue, 1]; a text as the
    mean of its word vectors, [1, 0] for "warm", [-1, 0] for "cool", [0, 1] for any other word."""

    WORDS = {"warm": (1.0, 0.0), "cool": (-1.0, 0.0)}

    def eval(self):
        return self

    def encode_image(self, batch):
        rgb = batch.mean(dim=(2, 3))
        import torch

        return torch.stack([rgb[:, 0] - rgb[:, 2], torch.ones(len(rgb))], dim=1)

    def encode_text(self, vectors):
        return vectors

    @classmethod
    def tokenizer(cls, texts: list[str]):
        import torch

        words = [text.lower().replace(",", " ").split() for text in texts]
        return torch.tensor(np.array([np.mean([cls.WORDS.get(w, (0.0, 1.0)) for w in ws], axis=0) for ws in words]))

    @staticmethod
    def preprocess(image):
        import torch

        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def test_clip_direction_is_positive_towards_the_text_and_negative_away() -> None:
    scorer = ClipDirection(ColourClip(), ColourClip.preprocess, ColourClip.tokenizer, "a photo",
                           "a photo, {instruction}")  # fmt: skip
    grey = np.full((8, 8, 3), 128, np.uint8)
    warmer, cooler = grey + np.array([40, 0, 0], np.uint8), grey + np.array([0, 0, 40], np.uint8)
    for text, sign in (("warm light", 1), ("cool light", -1)):
        toward, away, still = scorer.score([grey] * 3, [warmer, cooler, grey], [warmer] * 3, [text] * 3)
        assert sign * toward["clip_direction"] > 0.5 and sign * away["clip_direction"] < -0.5
        assert still["clip_direction"] == pytest.approx(0.0, abs=1e-6)  # no edit: no direction
        assert toward["clip_image"] == pytest.approx(1.0) and away["clip_image"] < 0.99


def _frame(n: int = 12) -> pd.DataFrame:
    """``n`` triplets: 8 ``flat``, the rest ``low_key``; the model is 2 dB above identity on every image (the
    images' own PSNR spreads over 20 dB), follows the direction on 3 of 4, identity on none."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        base = {"key": f"k{i}", "image_id": f"img{i}", "degradation": "flat" if i < 8 else "low_key",
                "light_direction": ("left", "right")[i % 2], "color_temperature": "warm"}  # fmt: skip
        level = float(rng.uniform(10, 30))
        rows.append({**base, "system": "model", "psnr": level + 2, "ssim": 0.5, "direction_ok": i % 4 != 0,
                     "temperature_ok": None})  # fmt: skip
        rows.append({**base, "system": "identity", "psnr": level, "ssim": 0.5, "direction_ok": False,
                     "temperature_ok": True})  # fmt: skip
        rows.append({**base, "system": "target", "direction_ok": True, "temperature_ok": True})
    return pd.DataFrame(rows)


def test_summary_intervals_hidden_cells_and_verdict(tmp_path: Path) -> None:
    frame = _frame()
    summary = summarize(frame, ["model", "identity", "target"], {"note": 1}, seed=3)
    model, target = summary["metrics"]["model"], summary["metrics"]["target"]
    assert summary["n_images"] == 12 and summary["note"] == 1 and summary["bootstrap"]["seed"] == 3
    assert model["n"] == 12 and model["psnr_n"] == 12 and model["direction_agreement"] == 0.75
    lo, hi = model["direction_agreement_ci"]
    assert 0.4 <= lo < 0.75 < hi <= 1.0
    assert "temperature_agreement" not in model and "psnr" not in target  # no value: no entry
    assert target["direction_agreement"] == 1 and target["direction_agreement_ci"] == [1.0, 1.0]
    # PSNR: the intervals of the two means overlap widely, the paired difference is exactly +2 everywhere
    paired = summary["comparisons"]["model"]
    assert paired["psnr"] == {"n": 12, "difference": 2.0, "ci": [2.0, 2.0], "verdict": "better"}
    assert paired["ssim"]["verdict"] == "no difference" and paired["direction_agreement"]["verdict"] == "better"
    assert summary["verdict"].startswith("model vs identity") and "BEATS identity" in summary["verdict"]
    assert "\n" not in summary["verdict"]
    # identity already agrees on temperature wherever the target does: that agreement cannot rank models
    assert summary["discrimination"]["direction_agreement"]["informative"] is True
    assert summary["discrimination"]["temperature_agreement"] == {"target_minus_identity": 0.0, "ci": [0.0, 0.0],
                                                                  "n": 12, "informative": False}  # fmt: skip
    # group cells with fewer than 5 rows keep their counts only
    assert summary["by_degradation"]["flat"]["model"]["psnr_n"] == 8 and "psnr" in summary["by_degradation"]["flat"]["model"]
    low = summary["by_degradation"]["low_key"]["model"]
    assert low["psnr_n"] == 4 and "psnr" not in low and "psnr" in low["hidden"]
    assert summarize(frame, ["model", "identity", "target"], seed=3) == {k: v for k, v in summary.items() if k != "note"}
    json.dumps(summary, allow_nan=False)  # strict JSON: no NaN leaks in
    write_html(tmp_path / "m.html", summary, ["a note"])
    html = (tmp_path / "m.html").read_text()
    assert "target (ceiling)" in html and "BEATS identity" in html and "a note" in html
    assert "WARNING: temperature agreement cannot tell a perfect model from doing nothing" in html
    assert "n=4 (hidden, n&lt;5)" in html and "1.000 [1.000, 1.000] n=12" in html
    plot_summary(tmp_path / "m.png", summary)
    assert load_rgb(tmp_path / "m.png").std() > 10


def test_verdict_says_when_the_model_does_not_beat_identity() -> None:
    frame = _frame()
    worse = frame["system"] == "model"
    frame.loc[worse, "psnr"] = frame.loc[worse, "psnr"] - 4  # now 2 dB below identity everywhere
    summary = summarize(frame, ["model", "identity", "target"])
    assert summary["comparisons"]["model"]["psnr"]["verdict"] == "worse"
    assert "does NOT beat identity" in summary["verdict"] and "worse on PSNR -2" in summary["verdict"]


def test_grid_layout_and_empty_notice(tmp_path: Path) -> None:
    image, _, _ = render_scene(Scene(size=64))
    grid = comparison_grid(
        [[image, image, image]] * 2, ["make it warm " * 20, "x"], ["input", "model", "target"], 100
    )
    assert grid.shape[1] == 3 * 104 + 4 and grid.shape[0] > 2 * 100
    assert (grid[:, :, 0] < 100).mean() > 0.01  # images and text drawn
    save_grid(tmp_path / "empty.png", [], [], ["input"])
    assert load_rgb(tmp_path / "empty.png").min() < 128  # the notice text is drawn
