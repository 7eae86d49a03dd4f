"""measure_lighting on rendered scenes with known light, and on the labelled evaldata sets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from relightflow.captions.measure import measure_lighting
from relightflow.testing import FaceScene, Scene, render_face, render_scene

REPO = Path(__file__).resolve().parents[1]
EVALDATA = Path(os.environ.get("RELIGHTFLOW_EVALDATA", REPO.parent / "shared" / "evaldata"))
COMBOS = [(h, v) for h in ("left", "front", "right") for v in ("above", "level", "below")]


@pytest.mark.parametrize(("horizontal", "vertical"), COMBOS)
def test_direction_with_mask(horizontal: str, vertical: str) -> None:
    for seed in range(2):
        image, mask, _ = render_scene(Scene(horizontal, vertical, "neutral", size=160, seed=seed))
        m = measure_lighting(image, mask)
        assert (m["horizontal"], m["vertical"]) == (horizontal, vertical), m
        assert m["mask_used"] and m["direction_method"] == "head"


@pytest.mark.parametrize("horizontal", ["left", "front", "right"])
def test_horizontal_without_mask(horizontal: str) -> None:
    image, _, _ = render_scene(Scene(horizontal, "level", "neutral", size=160, seed=3))
    m = measure_lighting(image)
    assert m["horizontal"] == horizontal and not m["mask_used"]


def test_mirrored_image_swaps_left_and_right() -> None:
    image, mask, _ = render_scene(Scene("left", "above", "neutral", size=160, seed=5))
    a, b = measure_lighting(image, mask), measure_lighting(image[:, ::-1].copy(), mask[:, ::-1].copy())
    assert (a["horizontal"], b["horizontal"]) == ("left", "right")
    assert a["direction_x"] == pytest.approx(-b["direction_x"], abs=0.05)


@pytest.mark.parametrize("temperature", ["warm", "neutral", "cool"])
@pytest.mark.parametrize("exposure", [0.7, 1.3])
def test_color_temperature(temperature: str, exposure: float) -> None:
    image, mask, _ = render_scene(Scene("left", "level", temperature, exposure=exposure, size=128, seed=7))
    assert measure_lighting(image, mask)["color_temperature"] == temperature


def test_key_contrast_and_back_light() -> None:
    dark, mask, _ = render_scene(Scene("left", "level", "neutral", exposure=0.25, size=128))
    bright, _, _ = render_scene(Scene("front", "level", "neutral", exposure=1.6, ambient=0.8, size=128))
    assert measure_lighting(dark)["key"] == "low" and measure_lighting(bright)["key"] == "high"
    side = measure_lighting(render_scene(Scene("left", "level", "neutral", ambient=0.05, size=128))[0], mask)
    flat = measure_lighting(render_scene(Scene("front", "level", "neutral", ambient=0.9, size=128))[0], mask)
    assert side["contrast"] > flat["contrast"] + 1.0
    backlit = bright.copy()
    backlit[mask] = (backlit[mask] * 0.2).astype(np.uint8)  # dark subject against a bright surround
    m = measure_lighting(backlit, mask)
    assert m["backlit"] and m["direction"] == "back"


def test_degenerate_inputs() -> None:
    flat = np.full((64, 64, 3), 128, np.uint8)
    m = measure_lighting(flat, np.zeros((64, 64), bool))  # empty mask: measured without it
    assert m["horizontal"] == "front" and m["color_temperature"] == "neutral" and not m["mask_used"]
    assert measure_lighting(np.zeros((64, 64, 3), np.uint8))["key"] == "low"
    with pytest.raises(ValueError):
        measure_lighting(np.zeros((4, 4), np.uint8))


@pytest.mark.skipif(not EVALDATA.is_dir(), reason="../shared/evaldata is not available")
def test_evaldata_figures() -> None:
    """Regression floors just under the figures measured when this was written (see the captions note).

    Cube++ light type is reported by the benchmark but not asserted: its tiles are white-balanced, so
    the pixels barely carry the light's colour (MANIFEST.md).
    """
    sys.path.insert(0, str(REPO / "benchmarks"))
    from eval_measure_lighting import mls, vidit

    v = vidit(EVALDATA / "C_vidit_direction_colortemp")
    assert v["vidit_left_right_acc"] >= 0.9 and v["vidit_temperature_acc"] >= 0.45
    assert all(rho == 1.0 for rho in v["vidit_warmth_spearman_per_scene"])
    m = mls(EVALDATA / "C_mls_colored_light_chart")
    assert m["mls_warm_acc"] == 1.0 and m["mls_chroma_vs_power_spearman"]["blue"] == 1.0


def _faces(kind: str, n: int) -> list[FaceScene]:
    """Rendered portraits (head and shoulders, and close FFHQ-like crops) for one labelled set."""
    rng = np.random.default_rng({"vertical": 11, "side": 12, "fill": 13}[kind])
    out = []
    for i in range(n):
        s = float(rng.choice([-1.0, 1.0]))
        if kind == "vertical":
            az, el, extra = rng.uniform(-60, 60), s * rng.uniform(35, 70), {}
        elif kind == "side":
            az, el, extra = s * rng.uniform(20, 90), rng.uniform(-30, 45), {}
        else:
            az, el = s * rng.uniform(30, 70), rng.uniform(-10, 40)
            extra = {
                "fill_azimuth": -s * float(rng.uniform(20, 70)),
                "fill_ratio": float(rng.uniform(0.2, 0.5)),
            }
        out.append(FaceScene(float(az), float(el), zoom=(1.0, 1.6, 2.2)[i % 3], background=("wall", "dark", "bright", "window")[i % 4],
                             size=192, seed=70_000 + 100 * len(kind) + i, **extra))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def measured_faces() -> dict[str, list[tuple[FaceScene, dict, dict]]]:
    """Per set: (scene, measured with the mask, measured without it (vertical set only))."""
    out = {}
    for kind, n in (("vertical", 24), ("side", 24), ("fill", 16)):
        rows = []
        for scene in _faces(kind, n):
            image, mask, _ = render_face(scene)
            unmasked = measure_lighting(image) if kind == "vertical" else None
            rows.append((scene, measure_lighting(image, mask), unmasked))
        out[kind] = rows
    return out


def _acc(rows, attr: str, truth, which: int = 1) -> float:
    return float(np.mean([r[which][attr] == truth(r[0]) for r in rows]))


def test_vertical_on_faces_lit_from_above_or_below(measured_faces) -> None:
    """The contour fit answered "level" for most faces lit >= 35 degrees above or below (hair on top)."""
    acc = _acc(measured_faces["vertical"], "vertical", lambda s: "above" if s.elevation > 0 else "below")
    assert acc >= 0.85, acc


def test_left_right_kept_on_side_lit_faces(measured_faces) -> None:
    acc = _acc(measured_faces["side"], "horizontal", lambda s: "left" if s.azimuth < 0 else "right")
    assert acc >= 0.95, acc


def test_key_side_under_a_weaker_fill_light(measured_faces) -> None:
    acc = _acc(measured_faces["fill"], "horizontal", lambda s: "left" if s.azimuth < 0 else "right")
    assert acc >= 0.9, acc


def test_mask_beats_no_mask_and_confidences_mean_something(measured_faces) -> None:
    rows = measured_faces["vertical"]
    truth = lambda s: "above" if s.elevation > 0 else "below"  # noqa: E731
    assert _acc(rows, "vertical", truth, 1) > _acc(rows, "vertical", truth, 2) + 0.1
    answers = [(m["vertical_confidence"], m["vertical"] == truth(s)) for s, m, _ in rows]
    answers += [(m["horizontal_confidence"], m["horizontal"] == ("left" if s.azimuth < 0 else "right"))
                for s, m, _ in measured_faces["side"] + measured_faces["fill"]]  # fmt: skip
    sure = [ok for c, ok in answers if c >= 0.5]
    assert len(sure) >= 0.5 * len(answers) and np.mean(sure) >= 0.95, (len(sure), np.mean(sure))
    for _, m, _ in rows:
        assert m["direction_method"] == "head" and -90 <= m["light_elevation"] <= 90
        assert all(0.0 <= m[k] <= 1.0 for k in ("horizontal_confidence", "vertical_confidence",
                                                "direction_confidence", "color_confidence"))  # fmt: skip


def test_front_and_level_only_for_nearly_frontal_light(measured_faces) -> None:
    """ "level" for a light >= 35 degrees above or below (the old answer for most real faces), or "front"
    for a light >= 20 degrees to a side, is rare."""
    level = [m["vertical"] == "level" for _, m, _ in measured_faces["vertical"]]
    front = [m["horizontal"] == "front" for _, m, _ in measured_faces["side"] + measured_faces["fill"]]
    assert np.mean(level) <= 0.15 and np.mean(front) <= 0.05, (np.mean(level), np.mean(front))
