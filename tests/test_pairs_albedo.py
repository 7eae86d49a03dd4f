"""Retinex albedo on rendered scenes with a known, constant skin albedo under directional light, and on
rendered still lifes and portraits with known textured reflectance (accuracy and agreement across lights)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from relightflow.config import section
from relightflow.pairs.albedo import AlbedoEstimator, retinex_albedo
from relightflow.pairs.color import srgb_to_linear
from relightflow.testing import FaceScene, ObjectScene, camera, face_layers, object_layers, render_scene

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
    cfg = section("pairs", albedo="retinex", retinex={"method": "surround", "scales": [10, 40], "blend": 0.3})
    est = AlbedoEstimator(cfg)
    out = est(image, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert est.describe() == {"method": "retinex", "blend": 0.3, "foreground_only": True,
                              "retinex_method": "surround", "scales": [10, 40]}  # fmt: skip
    default = AlbedoEstimator(section("pairs", albedo="retinex"))
    assert default.describe()["retinex_method"] == "gradient" and "chroma_edge" in default.describe()
    assert not np.array_equal(default(image, mask), out)
    assert np.array_equal(AlbedoEstimator(section("pairs", albedo="none"))(image, mask), image)
    with pytest.raises(ValueError, match="unknown pairs.albedo"):
        AlbedoEstimator({**section("pairs"), "albedo": "intrinsic_anything"})


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
    est = AlbedoEstimator(section("pairs", albedo="marigold", marigold={"model": folder}, retinex={"blend": 0.25}))
    out = est(image, mask)
    far = ~cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert out.dtype == np.uint8 and np.abs(out[far].astype(int) - image[far]).max() <= 1
    no_albedo = build_tiny_marigold(tmp_path / "normals", targets=("roughness", "metallicity"))
    with pytest.raises(ValueError, match="no 'albedo'"):
        MarigoldAlbedo(no_albedo)


def _si_mse(estimate: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """Scale-invariant MSE in linear light: min over a of mean (a * estimate - truth)^2 in the region."""
    p, g = estimate[region].reshape(-1), truth[region].reshape(-1)
    a = float(p @ g) / max(float(p @ p), 1e-12)
    return float(np.mean((a * p - g) ** 2))


def _multiscale_retinex(image: np.ndarray, sigmas=(15.0, 80.0, 250.0)) -> np.ndarray:
    """The predecessor's recipe: per channel, mean over sigmas of log(I) - log(Gaussian_sigma * I)."""
    x = image.astype(np.float64) + 1.0
    out = sum(np.log(x) - np.log(cv2.GaussianBlur(x, (0, 0), s * max(x.shape[:2]) / 1024)) for s in sigmas)
    return np.exp(out / len(sigmas))


@pytest.fixture(scope="module")
def lit_objects():
    """Three still lifes (dark and textured backdrops) and a portrait, each under three lights."""
    lights = [(-60.0, 30.0), (20.0, 50.0), (70.0, 15.0)]
    groups = []
    for seed in range(3):
        groups.append([object_layers(ObjectScene(az, el, backdrop=("dark", "textured")[seed % 2], size=128,
                                                 seed=seed)) for az, el in lights])  # fmt: skip
    groups.append([face_layers(FaceScene(az, el, size=128, seed=7)) for az, el in lights])
    return [[(camera.develop(layer.radiance, np.random.default_rng(i)), layer) for layer in g]
            for i, g in enumerate(groups)]  # fmt: skip


def test_closer_to_known_reflectance_than_multiscale_retinex(lit_objects):
    ours, msr, photo = [], [], []
    for group in lit_objects:
        for image, layer in group:
            ours.append(_si_mse(srgb_to_linear(retinex_albedo(image, layer.mask)), layer.albedo, layer.mask))
            msr.append(_si_mse(_multiscale_retinex(image), layer.albedo, layer.mask))
            photo.append(_si_mse(srgb_to_linear(image), layer.albedo, layer.mask))
    assert np.mean(ours) < 0.7 * np.mean(msr) and np.mean(ours) < 0.5 * np.mean(photo), (ours, msr, photo)


def test_albedo_agrees_across_lights_better_than_the_photos(lit_objects):
    ours, photos = [], []
    for group in lit_objects:
        mask = group[0][1].mask
        est = [srgb_to_linear(retinex_albedo(image, layer.mask)) for image, layer in group]
        lin = [srgb_to_linear(image) for image, _ in group]
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                ours.append(_si_mse(est[i], est[j], mask))
                photos.append(_si_mse(lin[i], lin[j], mask))
    assert np.mean(ours) < 0.5 * np.mean(photos), (np.mean(ours), np.mean(photos))


def test_unknown_method_raises(scene):
    with pytest.raises(ValueError, match="unknown Retinex method"):
        retinex_albedo(scene[0], scene[1], method="bilateral")
