"""Degradations: re-light an (albedo) image badly, so that a model learns to undo it.

``degrade(image, kind, seed, mask)`` returns the degraded ``uint8`` image and the parameters it drew
(JSON-ready). Every kind works in linear light on a shading field; smooth fields are computed at
``FIELD_SIDE`` px and upsampled (they hold no fine detail), occluder patterns at ``PATTERN_SIDE`` px. The
same (image, kind, seed, mask) always gives the same pixels.

Light directions use image axes: ``azimuth`` 0° = light from the viewer's right, 90° = from above,
180° = from the left; ``elevation`` 0° = grazing, 90° = from the camera.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from relightflow.pairs.color import linear_to_srgb8, luminance, srgb_to_linear
from relightflow.pairs.filters import blend, downscale, fast_blur, resize_field, soft_mask
from relightflow.pairs.occluders import PATTERNS, occluder

KINDS = ("soft_shading", "cast_shadow", "color_cast", "low_key", "flat", "harsh_side")
BACKGROUNDS = ("keep", "grey", "blur")
FIELD_SIDE = 256
PATTERN_SIDE = 512
Params = dict[str, Any]


def _r(x: float) -> float:
    return round(float(x), 4)


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """Accept HxW grey, HxWx1, HxWx3 or HxWx4 (alpha dropped) uint8 and return HxWx3 uint8."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise TypeError(f"expected uint8 image, got {img.dtype}")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected HxW, HxWx1, HxWx3 or HxWx4 image, got shape {img.shape}")
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


# ---------------------------------------------------------------- geometry


def light_vector(azimuth: float, elevation: float) -> np.ndarray:
    """Unit vector towards the light (x right, y down, z towards the camera)."""
    az, el = math.radians(azimuth), math.radians(elevation)
    return np.array([math.cos(el) * math.cos(az), -math.cos(el) * math.sin(az), math.sin(el)], np.float32)


def pseudo_normals(lin: np.ndarray, mask: np.ndarray | None, side: int = FIELD_SIDE) -> np.ndarray:
    """Surface normals at ``side`` px from the subject's silhouette (a rounded dome over the mask's distance
    transform) plus relief from blurred log-luminance of the albedo. Without a mask the frame is one dome."""
    lum = downscale(luminance(lin), side)
    h, w = lum.shape
    m = downscale(mask, side) > 0.5 if mask is not None else np.ones((h, w), bool)
    if not m.any():
        m = np.ones((h, w), bool)
    # a subject that fills the frame is closed by the frame; otherwise frame edges cut it (a torso at the
    # bottom continues out of the picture) and only the silhouette bounds the dome
    closed = bool(m.all())
    padded = np.pad(m.astype(np.uint8), 1) if closed else m.astype(np.uint8)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    dist = dist[1:-1, 1:-1] if closed else dist
    radius = max(float(dist.max()), 1.0)
    dist = cv2.GaussianBlur(dist, (0, 0), max(1.0, 0.25 * radius))  # round the medial-axis crease
    radius = max(float(dist.max()), 1.0)
    height = radius * np.sqrt(np.clip(1.0 - (1.0 - dist / radius) ** 2, 0.0, 1.0))
    relief = cv2.GaussianBlur(np.log(lum + 1e-3), (0, 0), max(1.0, side / 128))
    height = height + 0.05 * radius * (relief - relief[m].mean()) * m
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    n = np.dstack([-gx, -gy, np.ones_like(gx)])
    return n / np.linalg.norm(n, axis=2, keepdims=True)


def lambert(normals: np.ndarray, light: np.ndarray, wrap: float = 0.0) -> np.ndarray:
    """Wrapped Lambertian term ``max(0, (n.l + wrap) / (1 + wrap))``."""
    return np.clip((normals @ light + wrap) / (1.0 + wrap), 0.0, 1.0)


def _light(rng: np.random.Generator, azimuth: tuple[float, float], elevation: tuple[float, float]) -> Params:
    return {"azimuth": _r(rng.uniform(*azimuth) % 360), "elevation": _r(rng.uniform(*elevation))}


def _side_azimuth(rng: np.random.Generator, spread: float) -> tuple[float, float]:
    center = 180.0 if rng.random() < 0.5 else 0.0
    return center - spread, center + spread


def _apply(lin: np.ndarray, shading: np.ndarray, tint: Sequence[float] | None = None) -> np.ndarray:
    field = resize_field(shading.astype(np.float32), lin.shape)
    out = lin * field[..., None]
    if tint is not None:
        out *= np.asarray(tint, dtype=np.float32)
    return out


# ---------------------------------------------------------------- kinds


def soft_shading(lin: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, **_: Any):
    """Soft key light: azimuth 0-360°, elevation 15-70°, wrap 0-0.3, ambient 0.3-0.6, gain 0.9-1.25."""
    p = {"light": _light(rng, (0, 360), (15, 70)), "wrap": _r(rng.uniform(0, 0.3)),
         "ambient": _r(rng.uniform(0.3, 0.6)), "gain": _r(rng.uniform(0.9, 1.25))}  # fmt: skip
    direct = lambert(pseudo_normals(lin, mask), light_vector(**p["light"]), p["wrap"])
    return _apply(lin, p["gain"] * (p["ambient"] + (1 - p["ambient"]) * direct)), p


def cast_shadow(
    lin: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, pattern: str | None = None
):
    """Hard shadow of an occluder (``pattern`` in blinds/window/foliage/branches/fence/lattice) over a
    mild key light: shadow opacity 0.45-0.85, ambient 0.6-0.9, gain 0.95-1.3."""
    h, w = lin.shape[:2]
    scale = min(1.0, PATTERN_SIDE / max(h, w))
    occ, occ_p = occluder(rng, max(1, round(h * scale)), max(1, round(w * scale)), pattern)
    p = {"occluder": occ_p, "opacity": _r(rng.uniform(0.45, 0.85)), "light": _light(rng, (0, 360), (25, 75)),
         "ambient": _r(rng.uniform(0.6, 0.9)), "gain": _r(rng.uniform(0.95, 1.3))}  # fmt: skip
    key = lambert(pseudo_normals(lin, mask), light_vector(**p["light"]))
    key = resize_field(p["gain"] * (p["ambient"] + (1 - p["ambient"]) * key), occ.shape)
    return _apply(lin, key * (1.0 - p["opacity"] * occ)), p


def kelvin_rgb(kelvin: float) -> np.ndarray:
    """Linear RGB of a black body at ``kelvin`` relative to 6500 K, unit luminance (Helland's fit)."""

    def srgb(k: float) -> np.ndarray:
        t = k / 100.0
        r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
        g = (
            99.4708025861 * math.log(t) - 161.1195681661
            if t <= 66
            else 288.1221695283 * (t - 60) ** -0.0755148492
        )
        b = 255.0 if t >= 66 else (0.0 if t <= 19 else 138.5177312231 * math.log(t - 10) - 305.0447927307)
        return np.clip(np.array([r, g, b]), 1.0, 255.0) / 255.0

    rgb = srgb_to_linear(srgb(kelvin)) / srgb_to_linear(srgb(6500.0))
    return (rgb / luminance(rgb)).astype(np.float32)


def gel_rgb(hue: float, saturation: float) -> np.ndarray:
    """Linear RGB multiplier of a coloured gel (HSV hue in degrees), unit luminance."""
    hsv = np.array([[[hue / 2.0, saturation * 255.0, 255.0]]], dtype=np.uint8)
    rgb = srgb_to_linear(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])
    return (rgb / max(float(luminance(rgb)), 1e-4)).astype(np.float32)


def color_cast(lin: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, **_: Any):
    """Coloured light: 70 % colour temperature (warm 1900-3200 K or cool 7500-12000 K), 30 % a gel of any
    hue (saturation 0.25-0.6); strength 0.5-1; over a mild key light (ambient 0.55-0.85)."""
    if rng.random() < 0.7:
        warm = bool(rng.random() < 0.5)
        p: Params = {
            "mode": "temperature",
            "kelvin": _r(rng.uniform(1900, 3200) if warm else rng.uniform(7500, 12000)),
        }
        tint = kelvin_rgb(p["kelvin"])
    else:
        p = {"mode": "gel", "hue": _r(rng.uniform(0, 360)), "saturation": _r(rng.uniform(0.25, 0.6))}
        tint = gel_rgb(p["hue"], p["saturation"])
    p |= {"strength": _r(rng.uniform(0.5, 1.0)), "light": _light(rng, (0, 360), (20, 70)),
          "ambient": _r(rng.uniform(0.55, 0.85))}  # fmt: skip
    tint = 1.0 + p["strength"] * (tint - 1.0)
    p["rgb_gain"] = [_r(v) for v in tint]
    key = lambert(pseudo_normals(lin, mask), light_vector(**p["light"]))
    return _apply(lin, p["ambient"] + (1 - p["ambient"]) * key, tint), p


def _side_falloff(shape: tuple[int, int], azimuth: float, strength: float) -> np.ndarray:
    """Exponential fall-off of light across the frame away from the side it comes from."""
    h, w = shape
    y = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    x = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    a = math.radians(azimuth)
    toward = x * math.cos(a) - y * math.sin(a)  # +0.5 on the light's side
    return np.exp(-strength * (0.5 - toward))


def low_key(lin: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, **_: Any):
    """Dark, single side: exposure 0.2-0.45, side light (azimuth 0° or 180° ±30°, elevation 0-35°),
    ambient 0.02-0.1, fall-off 1-3 across the frame."""
    p = {"exposure": _r(rng.uniform(0.2, 0.45)), "light": _light(rng, _side_azimuth(rng, 30), (0, 35)),
         "ambient": _r(rng.uniform(0.02, 0.1)), "falloff": _r(rng.uniform(1, 3))}  # fmt: skip
    normals = pseudo_normals(lin, mask)
    key = lambert(normals, light_vector(**p["light"])) * _side_falloff(
        normals.shape[:2], p["light"]["azimuth"], p["falloff"]
    )
    return _apply(lin, p["exposure"] * (p["ambient"] + (1 - p["ambient"]) * key)), p


def flat(lin: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, **_: Any):
    """Overcast / flat: dull exposure 0.55-0.9, 85 % ambient under a faint top light, haze veil 0.03-0.12,
    desaturation 0-0.3."""
    p = {"exposure": _r(rng.uniform(0.55, 0.9)), "veil": _r(rng.uniform(0.03, 0.12)),
         "desaturate": _r(rng.uniform(0, 0.3)), "light": {"azimuth": 90.0, "elevation": 70.0}}  # fmt: skip
    top = lambert(pseudo_normals(lin, mask), light_vector(**p["light"]))
    out = _apply(lin, p["exposure"] * (0.85 + 0.15 * top))
    grey = luminance(out)[..., None]
    out = (1 - p["desaturate"]) * out + p["desaturate"] * grey
    return (1 - p["veil"]) * out + p["veil"] * float(grey.mean()), p


def harsh_side(lin: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, **_: Any):
    """Hard side light: azimuth 0° or 180° ±20°, elevation -10-30°, terminator width 0.03-0.12 (hard edge),
    ambient 0.03-0.15, gain 1.3-1.9 (the lit side clips)."""
    p = {"light": _light(rng, _side_azimuth(rng, 20), (-10, 30)), "edge": _r(rng.uniform(0.03, 0.12)),
         "ambient": _r(rng.uniform(0.03, 0.15)), "gain": _r(rng.uniform(1.3, 1.9))}  # fmt: skip
    ndotl = pseudo_normals(lin, mask) @ light_vector(**p["light"])
    t = np.clip((ndotl + p["edge"]) / (2 * p["edge"]), 0.0, 1.0)
    hard = t * t * (3 - 2 * t)
    return _apply(lin, p["gain"] * (p["ambient"] + (1 - p["ambient"]) * hard)), p


_KIND_FUNCS: dict[str, Callable[..., tuple[np.ndarray, Params]]] = {
    "soft_shading": soft_shading, "cast_shadow": cast_shadow, "color_cast": color_cast,
    "low_key": low_key, "flat": flat, "harsh_side": harsh_side,
}  # fmt: skip


# ---------------------------------------------------------------- background and entry point


def composite_background(
    degraded: np.ndarray, backdrop: np.ndarray, mask: np.ndarray | None, mode: str
) -> np.ndarray:
    """Put the degraded subject over ``backdrop`` (``keep``), flat grey 128 (``grey``), or the backdrop
    blurred by 2 % of its longer side (``blur``). Without a mask the whole frame is the subject."""
    if mode not in BACKGROUNDS:
        raise ValueError(f"unknown background {mode!r}; one of {BACKGROUNDS}")
    if mask is None:
        return degraded
    if mode == "grey":
        bg = np.full(degraded.shape, 128, np.uint8)
    elif mode == "blur":
        bg = fast_blur(backdrop, 0.02 * max(backdrop.shape[:2]))
    else:
        bg = backdrop
    return blend(degraded, bg, soft_mask(mask, degraded.shape))


def degrade(
    image: np.ndarray,
    kind: str,
    seed: int,
    mask: np.ndarray | None = None,
    *,
    background: str = "keep",
    backdrop: np.ndarray | None = None,
    pattern: str | None = None,
) -> tuple[np.ndarray, Params]:
    """Degrade ``image`` (HxWx3 uint8, usually the albedo) with ``kind`` seeded by ``seed``.

    ``mask`` (bool, uint8 or float in [0, 1]) shapes the normals and is where the degraded subject shows;
    outside it the ``background`` mode applies, from ``backdrop`` (default ``image``: pass the original
    photo). ``pattern`` forces the occluder of ``cast_shadow``. Returns ``(uint8 image, params)``.
    """
    if kind not in _KIND_FUNCS:
        raise ValueError(f"unknown degradation {kind!r}; one of {KINDS}")
    if pattern is not None and pattern not in PATTERNS:
        raise ValueError(f"unknown occluder pattern {pattern!r}; one of {sorted(PATTERNS)}")
    image = as_rgb8(image)
    m = soft_mask(mask, image.shape) if mask is not None else None
    rng = np.random.default_rng(seed)
    out, params = _KIND_FUNCS[kind](srgb_to_linear(image), m, rng, pattern=pattern)
    out8 = composite_background(
        linear_to_srgb8(out), image if backdrop is None else as_rgb8(backdrop), m, background
    )
    return out8, {"kind": kind, **params, "background": background if m is not None else "none"}


def choose_kind(rng: np.random.Generator, weighted: Sequence[dict[str, Any]]) -> str:
    """Draw a kind from ``[{kind, weight}, ...]`` (config ``pairs.degradations``)."""
    kinds = [d["kind"] for d in weighted]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown degradation kinds {unknown}; known: {KINDS}")
    weights = np.array([float(d.get("weight", 1.0)) for d in weighted])
    if weights.sum() <= 0:
        raise ValueError("pairs.degradations: weights must sum to > 0")
    return kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
