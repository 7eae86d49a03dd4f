"""Degradations and occluders on rendered scenes: each kind changes the light the way it says, params are
recorded, and the same seed gives the same pixels."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from relightflow.pairs.color import chromaticity, linear_to_srgb8, srgb_to_linear
from relightflow.pairs.degrade import (
    BACKGROUNDS,
    KINDS,
    choose_kind,
    composite_background,
    degrade,
    kelvin_rgb,
    light_vector,
    pseudo_normals,
)
from relightflow.pairs.occluders import PATTERNS, occluder
from relightflow.testing import render_scene

cv2.setNumThreads(1)


@pytest.fixture(scope="module")
def scene():
    image, mask, _ = render_scene(size=192, horizontal="front", seed=3)
    return image, mask


def test_kinds_cover_the_contract():
    assert set(KINDS) >= {"soft_shading", "cast_shadow", "color_cast", "low_key", "flat", "harsh_side"}
    assert set(PATTERNS) == {"blinds", "window", "foliage", "branches", "fence", "lattice"}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_deterministic_and_recorded(scene, kind):
    image, mask = scene
    out, params = degrade(image, kind, 123, mask)
    again, params2 = degrade(image, kind, 123, mask)
    other, _ = degrade(image, kind, 124, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.array_equal(out, again) and params == params2
    assert not np.array_equal(out, other)
    assert params["kind"] == kind
    assert json.loads(json.dumps(params)) == params  # JSON-ready
    assert np.abs(out.astype(int) - image).mean() > 2, "a degradation must change the subject"


def test_colour_roundtrip_is_exact():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    assert np.array_equal(linear_to_srgb8(srgb_to_linear(values)), values)


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_cast_shadow_darkens_exactly_the_occluded_region(scene, pattern):
    image, mask = scene
    out, params = degrade(image, "cast_shadow", 7, mask, pattern=pattern)
    assert params["occluder"]["pattern"] == pattern
    # regenerate the occluder map with the same draws, at full size, to find the shadowed pixels
    rng = np.random.default_rng(7)
    occ, _ = occluder(rng, *image.shape[:2], pattern)
    ratio = srgb_to_linear(out).mean(axis=2) / np.maximum(srgb_to_linear(image).mean(axis=2), 1e-3)
    shadowed, lit = mask & (occ > 0.8), mask & (occ < 0.2)
    if shadowed.sum() < 20 or lit.sum() < 20:
        pytest.skip(f"{pattern}: this draw leaves the subject fully lit or fully shadowed")
    assert np.median(ratio[shadowed]) < 0.75 * np.median(ratio[lit])


def test_occluders_are_fractional_and_resolution_free():
    for name in PATTERNS:
        small, p1 = occluder(np.random.default_rng(5), 128, 96, name)
        big, p2 = occluder(np.random.default_rng(5), 512, 384, name)
        assert p1 == p2 and small.min() >= 0 and small.max() <= 1
        coarse = cv2.resize(big, (96, 128), interpolation=cv2.INTER_AREA)
        assert abs(float(coarse.mean()) - float(small.mean())) < 0.12, name


def test_warm_and_cool_tints_move_chromaticity_the_right_way(scene):
    image, mask = scene
    before = chromaticity(srgb_to_linear(image), mask)
    seen = set()
    for seed in range(40):
        out, p = degrade(image, "color_cast", seed, mask)
        if p["mode"] != "temperature":
            continue
        after = chromaticity(srgb_to_linear(out), mask)
        warm = p["kelvin"] < 6500
        seen.add(warm)
        shift = (after[0] - after[2]) - (before[0] - before[2])
        assert shift > 0.01 if warm else shift < -0.01, p
    assert seen == {True, False}
    assert kelvin_rgb(2500)[0] > kelvin_rgb(2500)[2] and kelvin_rgb(10000)[2] > kelvin_rgb(10000)[0]
    assert np.allclose(kelvin_rgb(6500), 1.0, atol=1e-3)


def test_side_lights_brighten_their_side(scene):
    image, mask = scene
    cols = np.where(mask.any(axis=0))[0]
    mid = (cols[0] + cols[-1]) // 2
    for kind in ("low_key", "harsh_side"):
        for seed in range(6):
            out, p = degrade(image, kind, seed, mask)
            lum = srgb_to_linear(out).mean(axis=2)
            left, right = lum[:, :mid][mask[:, :mid]].mean(), lum[:, mid:][mask[:, mid:]].mean()
            from_left = 90 < p["light"]["azimuth"] < 270
            assert (left > right) == from_left, (kind, p)


def test_low_key_is_dark_and_flat_is_low_contrast(scene):
    image, mask = scene
    lum = srgb_to_linear(image).mean(axis=2)[mask]
    dark, _ = degrade(image, "low_key", 1, mask)
    flat, _ = degrade(image, "flat", 1, mask)
    assert srgb_to_linear(dark).mean(axis=2)[mask].mean() < 0.5 * lum.mean()
    flat_lum = srgb_to_linear(flat).mean(axis=2)[mask]
    assert flat_lum.std() / flat_lum.mean() < lum.std() / lum.mean() * 1.2


def test_soft_shading_follows_its_light(scene):
    image, mask = scene
    normals = pseudo_normals(srgb_to_linear(image), mask.astype(np.float32), side=image.shape[0])
    out, p = degrade(image, "soft_shading", 11, mask)
    ndotl = normals @ light_vector(**p["light"])
    ratio = srgb_to_linear(out).mean(axis=2) / np.maximum(srgb_to_linear(image).mean(axis=2), 1e-3)
    facing, away = mask & (ndotl > 0.6), mask & (ndotl < 0.1)
    assert ratio[facing].mean() > ratio[away].mean() * 1.3


@pytest.mark.parametrize("mode", BACKGROUNDS)
def test_background_modes(scene, mode):
    image, mask = scene
    out, p = degrade(image, "low_key", 2, mask, background=mode)
    bg = ~cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    if mode == "keep":
        assert np.abs(out[bg].astype(int) - image[bg]).max() <= 1
    elif mode == "grey":
        assert np.abs(out[bg].astype(int) - 128).max() <= 1
    else:
        assert out[bg].std() < image[bg].std()
    assert p["background"] == mode


def test_no_mask_means_whole_frame(scene):
    image, _ = scene
    out, p = degrade(image, "low_key", 2, None, background="grey")
    assert p["background"] == "none" and out.mean() < image.mean()
    full = np.full(image.shape[:2], 255, np.uint8)  # what segmenter `none` saves
    for kind in KINDS:
        with_full, _ = degrade(image, kind, 2, full)
        assert np.array_equal(with_full, degrade(image, kind, 2, None)[0]), kind


@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (37, 5, 1), (64, 48, 4), (301, 173, 3)])
def test_odd_sizes_and_channels(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    mask = np.zeros(shape[:2], bool)
    mask[shape[0] // 4 : max(shape[0] // 4 + 1, 3 * shape[0] // 4), :] = True
    for kind in KINDS:
        out, _ = degrade(image, kind, 1, mask)
        assert out.shape == (*shape[:2], 3) and out.dtype == np.uint8


def test_bad_arguments_raise():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(image, "sepia", 0)
    with pytest.raises(ValueError, match="unknown occluder"):
        degrade(image, "cast_shadow", 0, pattern="curtain")
    with pytest.raises(ValueError, match="mask shape"):
        degrade(image, "flat", 0, np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="unknown background"):
        composite_background(image, image, np.ones((8, 8), bool), "sky")


def test_choose_kind_follows_weights():
    rng = np.random.default_rng(0)
    draws = [
        choose_kind(rng, [{"kind": "flat", "weight": 3}, {"kind": "low_key", "weight": 1}])
        for _ in range(2000)
    ]
    assert 0.7 < draws.count("flat") / len(draws) < 0.8
    with pytest.raises(ValueError, match="unknown degradation kinds"):
        choose_kind(rng, [{"kind": "sepia", "weight": 1}])
