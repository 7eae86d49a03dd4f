"""The offline statistics lighting score on rendered scenes of known exposure and on real photos."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from relightflow.filter import stats
from relightflow.testing import render_scene


def _scene(exposure: float, **kw) -> np.ndarray:
    return render_scene(exposure=exposure, size=192, **kw)[0]


def test_score_contract_on_a_real_photo():
    score = stats.lighting_score(data.astronaut())
    assert isinstance(score, float)
    assert 0.0 < score <= 1.0


def test_exposure_ordering_on_rendered_scenes():
    """Scores rise towards normal exposure and fall beyond it, in both directions, for every light."""
    for horizontal in ("left", "front", "right"):
        under = [stats.lighting_score(_scene(e, horizontal=horizontal)) for e in (0.12, 0.25, 0.5)]
        over = [stats.lighting_score(_scene(e, horizontal=horizontal)) for e in (1.0, 1.6, 2.5, 4.0)]
        assert under == sorted(under), under
        assert over[1:] == sorted(over[1:], reverse=True), over
        assert max(under[-1], over[0]) > 2 * max(under[0], over[-1])


def test_exposure_statistic_follows_exposure():
    stops = [stats.measure(_scene(e))["exposure_stops"] for e in (0.125, 0.25, 0.5, 1.0)]
    assert np.all(np.diff(stops) > 0.5)


def test_degradations_of_real_photos_score_lower():
    """Darkened, blown-out, flattened and noisy versions of well exposed photos all score lower."""
    rng = np.random.default_rng(0)
    for name in ("chelsea", "coffee"):
        img = getattr(data, name)().astype(np.float64)
        good = stats.lighting_score(img.astype(np.uint8))
        variants = {
            "dark": img * 0.2,
            "blown": img * 3.0,
            "flat": 0.25 * img + 0.75 * img.mean(),
            "noisy": img + rng.normal(0, 25, img.shape),
        }
        for kind, bad in variants.items():
            score = stats.lighting_score(np.clip(bad, 0, 255).astype(np.uint8))
            assert score < good, (name, kind, score, good)


def test_clipping_and_cast_statistics_measure_what_they_say():
    img = data.chelsea()
    blown = np.clip(img.astype(np.int32) + 120, 0, 255).astype(np.uint8)
    assert stats.measure(blown)["clipped_highlights"] > stats.measure(img)["clipped_highlights"] + 0.2
    grey = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    tinted = np.clip(grey * np.array([1.0, 0.85, 0.55]), 0, 255).astype(np.uint8)
    assert stats.measure(tinted)["color_cast"] > stats.measure(grey)["color_cast"] + 1.0


def test_vectorised_formula_matches_single_image():
    imgs = [_scene(e) for e in (0.3, 1.0, 3.0)]
    measured = [stats.measure(i) for i in imgs]
    columns = {k: np.array([m[k] for m in measured]) for k in stats.STAT_NAMES}
    np.testing.assert_allclose(stats.score_from_stats(columns), [stats.lighting_score(i) for i in imgs])


def test_penalties_zero_inside_tolerance():
    clean = {k: 0.0 for k in stats.STAT_NAMES} | {
        "contrast": 0.2,
        "dynamic_range": 0.9,
        "local_contrast": 0.05,
    }
    clean["sharpness"] = 0.3
    assert float(stats.score_from_stats(clean)) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(10, 10), (10, 10, 4), (2, 50, 3)])
def test_bad_shapes_raise(shape):
    with pytest.raises(ValueError):
        stats.lighting_score(np.zeros(shape, dtype=np.uint8))


def test_evaluation_harness_on_rendered_scenes():
    from relightflow.filter import evaluate

    img = _scene(0.6)
    assert evaluate.expose(img, 0) is img
    brighter = evaluate.expose(img, 1.0).astype(float).mean()
    assert img.mean() < brighter < evaluate.expose(img, 2.0).astype(float).mean()
    scenes = [_scene(0.6, horizontal=h, seed=i) for i, h in enumerate(("left", "front", "right"))]
    result = evaluate.evaluate(scenes, evaluate.stats_scorer())
    assert result["n_images"] == 3
    assert result["acc -1 stops > -2 stops"] == 1.0 and result["acc +1 stops > +2 stops"] == 1.0
    assert result["ladder spearman"] > 0.8
