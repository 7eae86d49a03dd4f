"""Retinex albedo on rendered scenes with a known, constant skin albedo under directional light."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from relightflow.pairs.albedo import AlbedoEstimator, retinex_albedo
from relightflow.pairs.color import srgb_to_linear
from relightflow.testing import render_scene

cv2.setNumThreads(1)


@pytest.fixture(scope="module", params=["left", "right"])
def scene(request):
    image, mask, _ = render_scene(size=256, horizontal=request.param, vertical="above", seed=1)
    h = image.shape[0]
    yy, xx = np.mgrid[0:h, 0:h]
    head = ((xx - 0.5 * h) / (0.17 * h)) ** 2 + ((yy - 0.40 * h) / (0.22 * h)) ** 2 < 1  # inside the head
    return image, mask, head


def _log_lum_std(image: np.ndarray, region: np.ndarray) -> float:
    lum = srgb_to_linear(image).mean(axis=2)
    return float(np.log(lum[region] + 1e-3).std())


def test_retinex_flattens_shading_on_a_constant_albedo(scene):
    image, mask, head = scene
    albedo = retinex_albedo(image, mask)
    assert albedo.shape == image.shape and albedo.dtype == np.float32
    assert albedo.min() >= 0.0 and albedo.max() <= 1.0
    before, after = _log_lum_std(image, head), _log_lum_std((albedo * 255 + 0.5).astype(np.uint8), head)
    assert after < 0.6 * before, (before, after)


def test_retinex_preserves_chromaticity_and_exposure(scene):
    image, mask, head = scene
    albedo = srgb_to_linear(retinex_albedo(image, mask, blend=0.0))
    lin = srgb_to_linear(image)
    sel = head & (lin.min(axis=2) > 0.02)
    chroma_in = lin[sel] / lin[sel].sum(axis=1, keepdims=True)
    chroma_out = albedo[sel] / albedo[sel].sum(axis=1, keepdims=True)
    assert np.abs(chroma_in - chroma_out).max() < 0.02
    ratio = albedo[mask].mean() / lin[mask].mean()
    assert 0.6 < ratio < 1.5


def test_foreground_only_keeps_the_background(scene):
    image, mask, _ = scene
    albedo = (retinex_albedo(image, mask, foreground_only=True) * 255 + 0.5).astype(np.uint8)
    far = ~cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert np.abs(albedo[far].astype(int) - image[far]).max() <= 1
    everywhere = (retinex_albedo(image, mask, foreground_only=False) * 255 + 0.5).astype(np.uint8)
    assert np.abs(everywhere[far].astype(int) - image[far]).mean() > 1


def test_blend_one_returns_the_original(scene):
    image, mask, _ = scene
    albedo = (retinex_albedo(image, mask, blend=1.0) * 255 + 0.5).astype(np.uint8)
    assert np.abs(albedo.astype(int) - image).max() <= 1


def test_without_or_with_an_empty_mask():
    image, _, _ = render_scene(size=96)
    whole = retinex_albedo(image)
    assert whole.shape == image.shape
    empty = retinex_albedo(image, np.zeros(image.shape[:2], bool))
    assert np.abs(empty * 255 - image).max() <= 1


def test_estimator_methods():
    image, mask, _ = render_scene(size=64)
    cfg = {"albedo": "retinex", "retinex": {"scales": [10, 40], "blend": 0.3, "foreground_only": True}}
    est = AlbedoEstimator(cfg)
    out = est(image, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert est.describe() == {"method": "retinex", "blend": 0.3, "foreground_only": True, "scales": [10, 40]}
    assert np.array_equal(AlbedoEstimator({"albedo": "none"})(image, mask), image)
    with pytest.raises(ValueError, match="unknown pairs.albedo"):
        AlbedoEstimator({"albedo": "intrinsic_anything"})


def test_marigold_from_a_tiny_saved_pipeline(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from relightflow.pairs.albedo import MarigoldAlbedo
    from relightflow.testing.tiny_sam import build_tiny_marigold

    folder = build_tiny_marigold(tmp_path / "marigold")
    model = MarigoldAlbedo(folder)
    assert (model.index, model.n_targets, model.linear) == (0, 3, True)
    image, mask, _ = render_scene(size=72)
    albedo = model(image)
    assert albedo.shape == image.shape and albedo.dtype == np.float32
    assert albedo.min() >= 0.0 and albedo.max() <= 1.0
    est = AlbedoEstimator({"albedo": "marigold", "marigold": {"model": folder}, "retinex": {"blend": 0.25}})
    out = est(image, mask)
    far = ~cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert out.dtype == np.uint8 and np.abs(out[far].astype(int) - image[far]).max() <= 1
    no_albedo = build_tiny_marigold(tmp_path / "normals", targets=("roughness", "metallicity"))
    with pytest.raises(ValueError, match="no 'albedo'"):
        MarigoldAlbedo(no_albedo)
