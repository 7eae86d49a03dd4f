"""Lighting attributes measured from the pixels: direction, colour temperature, contrast, key.

No model: every attribute is a statistic of the (linearised) image, inside the subject mask when one is
given. Conventions match :mod:`relightflow.testing`: ``horizontal='left'`` means the light comes from the
image's left (viewer's left); ``vertical='above'`` means from the top of the frame.

* Direction: with a mask, the luminance along the subject's occluding contour is fitted with
  ``a + b·nx + c·ny`` (Lambertian shading of outward contour normals; per-sector medians make it robust
  to albedo changes such as hair vs skin). Without a mask, a plane is fitted to the low-pass
  log-luminance of the frame (light falls off away from the source). ``(b, c)/a`` points to the light.
  Without a mask the vertical slope is confounded by ground planes and sky: only a strong one counts.
* Back light (mask only): a subject much darker than its immediate surround.
* Colour temperature: grey-world illuminant estimate (Minkowski p-norm, ``MINKOWSKI_P``) over the
  unsaturated pixels of the frame — of the background when a mask is given, since skin and clothes bias
  it — as ``log2(R/B)`` (grey is 0); the light's chroma names strongly coloured lights.
* Contrast (stops between the 5th and 95th luminance percentile), hardness (from contrast) and key
  (median brightness).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from relightflow.images import resize_max_side

WORK_SIDE = 256  # images are measured at this size (px, longer side)
DIRECTION_THRESHOLD = 0.12  # |shading slope| below this on an axis means "front" / "level"
WARM_THRESHOLD = 0.4  # log2(R/B) of the illuminant estimate above this: warm (grey is 0)
COOL_THRESHOLD = -0.1  # below this: cool
TUNGSTEN_WARMTH = 1.0  # log2(R/B) above this: tungsten-like artificial light
MINKOWSKI_P = 1.0  # illuminant estimate: 1 = grey world, 6 = shades of grey, inf = max-RGB
BACKLIGHT_RATIO = 0.45  # subject mean luminance / surround luminance below this: back light
SOFT_STOPS, HARD_STOPS = 2.5, 4.5  # contrast (stops, p5-p95 luminance) thresholds for soft / hard light
LOW_KEY, HIGH_KEY = 0.35, 0.7  # median sRGB brightness thresholds (a normal exposure is ~0.45-0.65)
NOMASK_VERTICAL_FACTOR = 3.0  # vertical threshold multiplier when no subject mask is given
UPPER_CONTOUR = 0.6  # fraction of the subject's height (from the top) whose contour is used
COLORED_CHROMA = 0.7  # illuminant chroma above this: a coloured light (scene colours alone reach ~0.65)
_EPS = 1e-4
_HUES = [(15, "red"), (45, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"), (260, "blue"),
         (320, "magenta"), (360, "red")]  # fmt: skip


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """uint8 sRGB → float linear RGB in [0, 1]."""
    x = np.asarray(image, dtype=np.float32) / 255.0
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _luminance(linear: np.ndarray) -> np.ndarray:
    return linear @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def _prepare(image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Downscale the image (and mask, nearest) to the working size; drop masks that are empty or full."""
    small = resize_max_side(np.asarray(image, dtype=np.uint8), WORK_SIDE)
    if mask is None:
        return small, None
    m = cv2.resize(np.asarray(mask, dtype=np.uint8), small.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
    frac = m.mean()
    return small, (m if 0.01 < frac < 0.99 else None)


def _contour_samples(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of a thin inner ring along the mask's occluding contour, with outward unit normals.

    The ring skips the frame border (a body cut by the image edge) and keeps the upper
    ``UPPER_CONTOUR`` of the subject's height: the lower contour is usually cut, in contact with the
    ground or a torso of another albedo (clothes), which biases the vertical estimate.
    """
    m8 = mask.astype(np.uint8)
    dist = cv2.distanceTransform(np.pad(m8, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    size = math.sqrt(mask.sum())
    ring = (dist > 0.5) & (dist <= max(2.0, 0.06 * size))
    border = np.zeros_like(mask)
    margin = max(2, int(0.03 * max(mask.shape)))
    border[:margin, :] = border[-margin:, :] = border[:, :margin] = border[:, -margin:] = True
    ring &= ~border
    rows = np.nonzero(mask.any(axis=1))[0]
    ring[int(rows.min() + UPPER_CONTOUR * (rows.max() - rows.min())) + 1 :, :] = False
    smooth = cv2.GaussianBlur(dist, (0, 0), 2.0)
    gy, gx = np.gradient(smooth)
    ys, xs = np.nonzero(ring)
    n = -np.stack([gx[ys, xs], gy[ys, xs]], axis=1)  # distance grows inwards: outward = -gradient
    norm = np.linalg.norm(n, axis=1)
    keep = norm > 1e-3
    return ys[keep], xs[keep], n[keep] / norm[keep, None]


def _fit_contour(lum: np.ndarray, mask: np.ndarray, sectors: int = 16) -> tuple[float, float] | None:
    """Fit per-sector median luminance of the contour ring to ``a + b cos θ + c sin θ``; return (b/a, c/a)."""
    ys, xs, normals = _contour_samples(mask)
    if len(ys) < 4 * sectors:
        return None
    theta = np.arctan2(normals[:, 1], normals[:, 0])
    bins = ((theta + np.pi) / (2 * np.pi) * sectors).astype(int) % sectors
    values = lum[ys, xs]
    rows, targets = [], []
    for k in range(sectors):
        sel = bins == k
        if sel.sum() < 3:
            continue
        angle = np.arctan2(normals[sel, 1].mean(), normals[sel, 0].mean())
        rows.append([1.0, math.cos(angle), math.sin(angle)])
        targets.append(float(np.median(values[sel])))
    if len(rows) < sectors // 2:
        return None
    a, b, c = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)[0]
    scale = max(float(np.mean(targets)), _EPS)
    return float(b / scale), float(c / scale)


def _fit_plane(lum: np.ndarray, region: np.ndarray | None) -> tuple[float, float]:
    """Slope of a plane fitted to low-pass log-luminance over the region, per half-width of the frame."""
    h, w = lum.shape
    low = cv2.GaussianBlur(np.log2(lum + 0.01), (0, 0), max(h, w) / 32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = (xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2)
    sel = region if region is not None else np.ones_like(lum, dtype=bool)
    design = np.stack([np.ones(sel.sum()), xx[sel], yy[sel]], axis=1)
    _, b, c = np.linalg.lstsq(design, low[sel], rcond=None)[0]
    return float(b) / 1.5, float(c) / 1.5  # 1.5 stops across the half-frame ~ a strong side light


def _label(value: float, negative: str, positive: str, neutral: str, threshold: float) -> str:
    if value <= -threshold:
        return negative
    return positive if value >= threshold else neutral


def _backlit(lum: np.ndarray, mask: np.ndarray | None) -> tuple[bool, float]:
    """Subject-to-surround luminance ratio; a dark subject against a bright surround is back-lit."""
    if mask is None:
        return False, float("nan")
    surround = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool) & ~mask
    if surround.sum() < 20:
        return False, float("nan")
    ratio = float(np.median(lum[mask]) / max(np.median(lum[surround]), _EPS))
    return ratio < BACKLIGHT_RATIO, ratio


def direction_attributes(lum: np.ndarray, mask: np.ndarray | None) -> dict[str, Any]:
    """Horizontal / vertical light direction, back light and a confidence in [0, 1]."""
    fit = _fit_contour(lum, mask) if mask is not None else None
    method = "contour" if fit is not None else "plane"
    dx, dy = fit if fit is not None else _fit_plane(lum, None)
    backlit, ratio = _backlit(lum, mask)
    horizontal = _label(dx, "left", "right", "front", DIRECTION_THRESHOLD)
    # without a mask, ground planes and sky confound the vertical slope: only a strong one counts
    vertical = _label(
        dy, "above", "below", "level", DIRECTION_THRESHOLD * (1 if fit else NOMASK_VERTICAL_FACTOR)
    )
    if backlit:
        direction = "back"
    elif abs(dx) >= max(abs(dy), DIRECTION_THRESHOLD):
        direction = horizontal
    elif vertical != "level":
        direction = vertical
    else:
        direction = "front"
    strength = math.hypot(dx, dy)
    return {
        "horizontal": horizontal, "vertical": vertical, "direction": direction, "backlit": backlit,
        "direction_x": round(dx, 4), "direction_y": round(dy, 4), "subject_surround_ratio": round(ratio, 4),
        "direction_method": method,
        "direction_confidence": round(min(1.0, strength / (2 * DIRECTION_THRESHOLD)), 3),
    }  # fmt: skip


def illuminant_rgb(linear: np.ndarray, p: float = MINKOWSKI_P) -> np.ndarray:
    """Shades-of-grey illuminant estimate (unit-sum RGB) from unsaturated, not-too-dark pixels."""
    px = linear.reshape(-1, 3)  # (a masked selection is already N x 3)
    ok = (px.max(axis=1) < 0.98) & (px.max(axis=1) > 0.01)
    px = px[ok] if ok.sum() > 50 else px
    est = np.power(np.mean(np.power(px + _EPS, p), axis=0), 1.0 / p)
    return est / max(float(est.sum()), _EPS)


def _hue_name(rgb: np.ndarray) -> str:
    hsv = cv2.cvtColor(np.clip(rgb / max(float(rgb.max()), _EPS), 0, 1).reshape(1, 1, 3).astype(np.float32),
                       cv2.COLOR_RGB2HSV)  # fmt: skip
    hue = float(hsv[0, 0, 0])
    return next(name for limit, name in _HUES if hue <= limit)


def color_attributes(linear: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Colour temperature (warm / neutral / cool), the light's chroma and, when saturated, its hue name.

    With a subject mask the illuminant is estimated on the background (skin and clothes bias a grey-world
    estimate), provided it covers at least a fifth of the frame.
    """
    background = ~mask if mask is not None and (~mask).mean() >= 0.2 else None
    rgb = illuminant_rgb(linear[background] if background is not None else linear)
    warmth = float(np.log2((rgb[0] + _EPS) / (rgb[2] + _EPS)))
    chroma = float((rgb.max() - rgb.min()) / max(float(rgb.max()), _EPS))
    if COOL_THRESHOLD < warmth < WARM_THRESHOLD:
        temperature = "neutral"
    elif warmth >= WARM_THRESHOLD:
        temperature = "warm"
    else:
        temperature = "cool"
    margin = min(abs(warmth - WARM_THRESHOLD), abs(warmth - COOL_THRESHOLD))
    return {
        "color_temperature": temperature, "warmth": round(warmth, 4), "color_saturation": round(chroma, 4),
        "light_color": _hue_name(rgb) if chroma >= COLORED_CHROMA else "white",
        "illuminant_rgb": [round(float(v), 4) for v in rgb],
        "color_confidence": round(min(1.0, margin / 0.3), 3),
    }  # fmt: skip


def tone_attributes(image: np.ndarray, lum: np.ndarray, region: np.ndarray | None) -> dict[str, Any]:
    """Contrast in stops, hardness, median brightness and key of the region."""
    sel = region if region is not None else np.ones_like(lum, dtype=bool)
    lo, hi = np.percentile(lum[sel], [5, 95])
    contrast = float(np.log2((hi + 0.005) / (lo + 0.005)))
    brightness = float(np.median(image.reshape(-1, 3)[sel.reshape(-1)].mean(axis=1))) / 255.0
    hardness = "soft" if contrast < SOFT_STOPS else ("hard" if contrast > HARD_STOPS else "medium")
    key = "low" if brightness < LOW_KEY else ("high" if brightness > HIGH_KEY else "mid")
    return {
        "contrast": round(contrast, 3),
        "hardness": hardness,
        "brightness": round(brightness, 4),
        "key": key,
    }


def light_type(color: dict[str, Any], tone: dict[str, Any]) -> str:
    """Coarse source type: coloured light, artificial (tungsten-warm, or a night-time low key) or daylight."""
    if color["light_color"] != "white":
        return "colored"
    if color["warmth"] >= TUNGSTEN_WARMTH or (tone["key"] == "low" and tone["brightness"] < 0.2):
        return "artificial"
    return "daylight"


def measure_lighting(image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Measure the lighting of one ``HxWx3 uint8`` RGB image (optionally inside an ``HxW bool`` mask)."""
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 8:
        raise ValueError(f"expected an HxWx3 image of at least 8 px, got shape {image.shape}")
    small, region = _prepare(image, mask)
    linear = srgb_to_linear(small)
    lum = _luminance(linear)
    out: dict[str, Any] = {"mask_used": region is not None}
    out.update(direction_attributes(lum, region))
    out.update(color_attributes(linear, region))
    tone = tone_attributes(small, lum, region)
    out.update(tone)
    out["light_type"] = light_type(out, tone)
    return out
