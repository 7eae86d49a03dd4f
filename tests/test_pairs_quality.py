"""The pair quality gate: measured change on constructed pairs of known CIEDE2000, the right reason for a
no-op and for a wrecked subject, a good pair kept; through the degrade stage, dropped variants counted per
reason and kind, images with no variant left rejected, and the counts adding up."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from skimage.color import lab2rgb, rgb2lab

from relightflow.config import section
from relightflow.images import save_image
from relightflow.manifest import read_table, write_table
from relightflow.pairs import run as pairs_run
from relightflow.pairs.degrade import KINDS
from relightflow.pairs.filters import feather
from relightflow.pairs.quality import BOUND_KEYS, COLUMNS, TOO_LITTLE, WRECKED, gate_reason, measure_change
from relightflow.pairs.run import PAIR_COLUMNS, DegradeStage
from relightflow.shards import ShardOutputs, reason_key, run_shard
from relightflow.testing import Scene, render_scene

cv2.setNumThreads(1)
SIZE = 96
BOUNDS = section("pairs")["quality"]["bounds"]


def _grey(lightness: np.ndarray) -> np.ndarray:
    """sRGB uint8 of a neutral grey with the given CIE L* per pixel."""
    lab = np.dstack([lightness, np.zeros_like(lightness), np.zeros_like(lightness)]).astype(np.float64)
    return np.round(lab2rgb(lab) * 255).astype(np.uint8)


def _ciede2000_lightness(l1: float, l2: float) -> float:
    """CIEDE2000 of two neutral greys: only the lightness term, |ΔL*| / S_L (Sharma et al. 2005)."""
    mean = (l1 + l2) / 2
    return abs(l1 - l2) / (1 + 0.015 * (mean - 50) ** 2 / math.sqrt(20 + (mean - 50) ** 2))


@pytest.fixture(scope="module")
def disc():
    """A target: a grey disc (the subject, L* 50) on a lighter ground (L* 70), and its mask."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE / 3) ** 2
    lightness = np.where(mask, 50.0, 70.0)
    return lightness, mask


def _subject_l(image: np.ndarray, mask: np.ndarray) -> float:
    return float(rgb2lab(image)[..., 0][mask].mean())


def test_identity_measures_no_change(disc):
    lightness, mask = disc
    target = _grey(lightness)
    change = measure_change(target, target, mask)
    assert set(change) == set(COLUMNS)
    assert change["delta_e_in"] == change["delta_e_out"] == change["clipped_in"] == 0
    assert change["ssim_in"] == pytest.approx(1) and change["ssim_out"] == pytest.approx(1)
    whole = measure_change(target, target)  # no mask: the frame is the subject, nothing is outside
    assert whole["delta_e_in"] == 0 and math.isnan(whole["delta_e_out"]) and math.isnan(whole["ssim_out"])
    assert gate_reason(change, "soft_shading", BOUNDS).startswith(f"{TOO_LITTLE}: mean ΔE2000 0.00")


@pytest.mark.parametrize("shift", [2.0, 10.0])
def test_known_lightness_change(disc, shift):
    lightness, mask = disc
    target, degraded = _grey(lightness), _grey(np.where(mask, 50.0 + shift, 70.0))
    expected = _ciede2000_lightness(_subject_l(target, mask), _subject_l(degraded, mask))
    change = measure_change(degraded, target, mask, side=SIZE)
    assert change["delta_e_in"] == pytest.approx(expected, abs=0.05)
    assert change["delta_e_out"] == 0 and change["clipped_in"] == 0
    reason = gate_reason(change, "soft_shading", BOUNDS)
    if shift == 2.0:  # ΔE00 2.0: an input that looks like its target
        assert reason_key(reason) == TOO_LITTLE
    else:  # ΔE00 9.5: a change worth learning
        assert reason == ""


def test_crushed_subject_is_wrecked(disc):
    lightness, mask = disc
    half = mask & (np.arange(SIZE)[None, :] < SIZE / 2)
    degraded = _grey(np.where(half, 0.0, np.where(mask, 60.0, 70.0)))  # half the subject crushed to black
    change = measure_change(degraded, _grey(lightness), mask, side=SIZE)
    assert change["clipped_in"] == pytest.approx(half.sum() / mask.sum(), abs=0.01)
    reason = gate_reason(change, "soft_shading", BOUNDS)
    assert reason_key(reason) == WRECKED and "crushed or blown" in reason
    assert gate_reason(change, "low_key", {"low_key": {**BOUNDS["low_key"], "max_clipped": 0.6}}) == ""


def test_inverted_structure_is_wrecked(disc):
    _, mask = disc
    checker = (np.add.outer(np.arange(SIZE) // 4, np.arange(SIZE) // 4) % 2).astype(bool)
    target = _grey(np.where(mask, np.where(checker, 40.0, 60.0), 70.0))
    degraded = _grey(np.where(mask, np.where(checker, 60.0, 40.0), 70.0))  # same means, structure inverted
    change = measure_change(degraded, target, mask, side=SIZE)
    assert change["ssim_in"] < 0 and change["clipped_in"] == 0
    reason = gate_reason(change, "color_cast", BOUNDS)
    assert reason_key(reason) == WRECKED and "SSIM" in reason


def test_bounds_cover_every_kind():
    assert set(BOUNDS) == set(KINDS)
    for bounds in BOUNDS.values():
        assert set(bounds) == set(BOUND_KEYS)
    assert set(COLUMNS) <= set(PAIR_COLUMNS)


@pytest.mark.parametrize("shape", [(40, 1000), (8, 200)])
def test_thin_images_are_measured(shape):
    """A panorama is measured with its shorter side at 16 px (an SSIM window fits); an image thinner than
    the window gets no SSIM (NaN passes the gate) but still its ΔE."""
    target = _grey(np.full(shape, 50.0))
    change = measure_change(_grey(np.full(shape, 60.0)), target, side=128)
    assert change["delta_e_in"] > 9
    assert math.isnan(change["ssim_in"]) == (shape[0] < 11)
    with pytest.raises(ValueError, match="its target"):
        measure_change(target[:, :-1], target)


# ---------------------------------------------------------------- through the degrade stage


def _fake_degrade(image, kind, seed, mask=None, *, background="keep", backdrop=None, pattern=None):
    """Known outcomes per kind: ``flat`` returns the target (a no-op), ``low_key`` crushes the subject to
    black (a wreck), ``soft_shading`` darkens the subject to 60 % (a good pair)."""
    out, subject = backdrop.copy(), np.asarray(mask) > 127
    if kind == "low_key":
        out[subject] = 0
    elif kind == "soft_shading":
        out[subject] = (out[subject] * 0.6).astype(np.uint8)
    return out, {"kind": kind, "background": background}


@pytest.fixture(scope="module")
def segments(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    rows = []
    for i in range(8):
        image, mask, _ = render_scene(Scene(horizontal=("left", "right", "front")[i % 3], size=SIZE, seed=i))
        save_image(root / f"img{i}.png", image)
        save_image(root / f"img{i}_mask.png", feather(mask, 2))
        rows.append({"image_id": f"img{i}", "path": str(root / f"img{i}.png"),
                     "mask_path": str(root / f"img{i}_mask.png"), "split": "train"})  # fmt: skip
    write_table(root / "segments.parquet", rows)
    return root / "segments.parquet"


def _run(tmp_path, segments, monkeypatch, **quality):
    monkeypatch.setattr(pairs_run, "degrade", _fake_degrade)
    kinds = [{"kind": "flat", "weight": 2}, {"kind": "low_key", "weight": 2}, {"kind": "soft_shading", "weight": 1}]
    cfg = section("pairs", max_side=SIZE, variants=2, degradations=kinds, quality=quality)
    out = {k: tmp_path / k for k in ("pairs.parquet", "images", "contact.png", "rejects.parquet", "stats.json")}
    stage = DegradeStage(segments, cfg, 5, out["images"], out["contact.png"], threads=2)
    stats = run_shard(stage, "00000", ShardOutputs(out["pairs.parquet"], out["rejects.parquet"], out["stats.json"]))
    return stats, read_table(out["pairs.parquet"]), read_table(out["rejects.parquet"]), out["images"]


def test_stage_drops_variants_and_rejects_images_with_none_left(segments, tmp_path, monkeypatch):
    stats, pairs, rejects, images = _run(tmp_path, segments, monkeypatch)
    assert stats.n_in == 8 == stats.n_kept + stats.n_rejected
    assert stats.n_kept > 0 and stats.n_rejected > 0  # seed 5 draws both
    dropped = stats.counts["dropped"]
    assert set(dropped) <= {TOO_LITTLE, WRECKED} and set(dropped.get(TOO_LITTLE, {})) == {"flat"}
    assert set(dropped.get(WRECKED, {})) == {"low_key"}
    n_dropped = sum(n for per_kind in dropped.values() for n in per_kind.values())
    assert stats.counts["variants"] == 2 * stats.n_in == stats.n_rows + n_dropped == len(pairs) + n_dropped
    assert set(pairs.degradation) == {"soft_shading"} and stats.counts["kinds"] == {"soft_shading": len(pairs)}
    assert (pairs.delta_e_in > BOUNDS["soft_shading"]["min_delta_e"]).all() and (pairs.clipped_in == 0).all()
    assert set(rejects.image_id) == {f"img{i}" for i in range(8)} - set(pairs.image_id)
    for reason in rejects.reason:
        assert "every variant failed the quality gate" in reason
        assert reason_key(reason) in {TOO_LITTLE, WRECKED, "failed the quality gate"}
    assert sum(stats.reasons.values()) == stats.n_rejected
    for image_id in rejects.image_id:  # nothing written for a rejected image
        assert not list(images.glob(f"{image_id}_*"))
    written = {p.name for p in images.glob("*_v*.png")}
    assert written == {f"{r.image_id}_v{r.variant}.png" for r in pairs.itertuples()}


def test_disabled_gate_measures_but_keeps_everything(segments, tmp_path, monkeypatch):
    stats, pairs, rejects, _ = _run(tmp_path, segments, monkeypatch, enabled=False)
    assert stats.n_kept == 8 and stats.n_rejected == 0 and len(rejects) == 0
    assert len(pairs) == 16 and stats.counts["variants"] == 16 and stats.counts["dropped"] == {}
    noop = pairs[pairs.degradation == "flat"]
    assert len(noop) and (noop.delta_e_in == 0).all()
    assert (pairs[pairs.degradation == "low_key"].clipped_in > 0.5).all()
