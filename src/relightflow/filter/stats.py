"""Lighting score from measured image statistics: no weights, deterministic, a few ms per image.

Every statistic is measured on the image downscaled so its longer side is at most ``ANALYSIS_SIDE`` px
(sRGB values scaled to [0, 1]; luma ``Y = 0.2126 R + 0.7152 G + 0.0722 B``):

======================  =====================================================================
statistic               measure
======================  =====================================================================
``exposure_stops``      log2 of the centre-weighted mean linear luma over middle grey (0.18), as a camera
                        meters (a Gaussian weight of sigma 0.35 of the longer side)
``clipped_highlights``  fraction of pixels with a channel >= 250/255
``clipped_shadows``     fraction of pixels with luma <= 4/255
``contrast``            RMS contrast: standard deviation of luma
``dynamic_range``       1st-99th percentile spread of luma
``local_contrast``      mean abs(luma - Gaussian blur of luma, sigma = 2 % of the side)
``color_cast``          mean chroma of the image over its chroma spread, CIELAB (a*, b*)
``noise``               Immerkaer's noise sigma on the luma (8-bit units)
``sharpness``           mean abs(Laplacian) over the luma standard deviation
======================  =====================================================================

Each rule of ``PENALTIES`` turns one statistic into a cost ``weight * log(1 + d^2)``, with ``d`` its
distance beyond a centre in units of a scale (one-sided rules count one side only; the two-sided
``exposure`` rule counts both); the score is ``exp(-sum of costs)`` in (0, 1], 1 = nothing wrong. The
Cauchy-like cost grows slowly: a photo with two faults is still ranked against one with three, instead
of every imperfect photo collapsing towards 0, and no rule has a dead zone around the exposure, so
well-exposed photos keep their order too.

The exposure rules are set for real camera brackets (``relightflow.testing.camera``): a camera-like tone
curve rolls highlights off, so a correctly exposed photo may hold some near-white pixels (sky, snow,
lamps) and sit up to a stop above middle grey; an underexposed frame is darker but clean. Exposure within
``[-0.5, +1]`` stops costs almost nothing (only a faint pull towards +0.25), beyond it the cost rises, and
clipping costs little until a sizeable area is blown. Harsh lighting shows as high contrast and clipping,
flat or murky lighting as low contrast and local contrast. A low-key portrait is penalised for its
exposure: the score ranks *well-exposed, clean* lighting first, it does not judge taste.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import cv2
import numpy as np

ANALYSIS_SIDE = 256
MIDDLE_GREY = 0.18
LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
STAT_NAMES = (
    "exposure_stops", "clipped_highlights", "clipped_shadows", "contrast", "dynamic_range",
    "local_contrast", "color_cast", "noise", "sharpness",
)  # fmt: skip

# name -> (statistic, direction, centre, scale, weight). direction +1: costs above the centre, -1: below,
# 0: both sides. cost = weight * log(1 + (excess / scale)^2).
PENALTIES: dict[str, tuple[str, int, float, float, float]] = {
    "underexposed": ("exposure_stops", -1, -0.5, 0.8, 1.0),
    "overexposed": ("exposure_stops", +1, 1.0, 0.6, 1.0),
    "exposure": ("exposure_stops", 0, 0.25, 4.5, 1.0),
    "clipped_highlights": ("clipped_highlights", +1, 0.0, 0.2, 0.6),
    "clipped_shadows": ("clipped_shadows", +1, 0.0, 0.1, 0.3),
    "contrast": ("contrast", 0, 0.2, 0.1, 0.3),
    "flat": ("contrast", -1, 0.15, 0.06, 0.3),
    "harsh": ("contrast", +1, 0.3, 0.08, 0.3),
    "low_range": ("dynamic_range", -1, 0.55, 0.3, 0.2),
    "murky": ("local_contrast", -1, 0.03, 0.02, 0.2),
    "color_cast": ("color_cast", +1, 1.0, 1.5, 0.3),
    "noisy": ("noise", +1, 3.0, 4.0, 0.3),
    "blurry": ("sharpness", -1, 0.1, 0.05, 0.2),
}


def _srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _noise_sigma(luma8: np.ndarray) -> float:
    """Immerkaer (1996): noise sigma from the image convolved with a Laplacian-difference mask."""
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    conv = cv2.filter2D(luma8, cv2.CV_32F, mask, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    h, w = conv.shape
    if h < 1 or w < 1:
        return 0.0
    return float(np.sqrt(np.pi / 2.0) * np.abs(conv).sum() / (6.0 * h * w))


def _color_cast(rgb: np.ndarray) -> float:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    a, b = lab[..., 1] - 128.0, lab[..., 2] - 128.0
    mean_chroma = float(np.hypot(a.mean(), b.mean()))
    spread = float(np.hypot(a.std(), b.std()))
    return mean_chroma / (spread + 2.0)


@functools.lru_cache(maxsize=8)
def metering_weights(h: int, w: int) -> np.ndarray:
    """Centre-weighted metering: a Gaussian of sigma 0.35 of the longer side, summing to 1."""
    yy, xx = np.mgrid[0:h, 0:w]
    weights = np.exp(-0.5 * ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (0.35 * max(h, w)) ** 2)
    return (weights / weights.sum()).astype(np.float32)


def measure(image: np.ndarray) -> dict[str, float]:
    """The statistics of ``STAT_NAMES`` for one ``HxWx3 uint8`` RGB image."""
    rgb = np.ascontiguousarray(_analysis_size(np.asarray(image, dtype=np.uint8)))
    srgb = rgb.astype(np.float32) / 255.0
    luma = srgb @ LUMA
    metered = float((_srgb_to_linear(luma) * metering_weights(*luma.shape)).sum())
    p1, p99 = np.percentile(luma, [1, 99])
    sigma = max(1.0, 0.02 * max(luma.shape))
    local = float(np.abs(luma - cv2.GaussianBlur(luma, (0, 0), sigma)).mean())
    luma8 = np.clip(luma * 255.0 + 0.5, 0, 255).astype(np.uint8)
    lap = float(np.abs(cv2.Laplacian(luma, cv2.CV_32F)).mean())
    contrast = float(luma.std())
    return {
        "exposure_stops": float(np.log2((metered + 1e-4) / MIDDLE_GREY)),
        "clipped_highlights": float((rgb.max(axis=2) >= 250).mean()),
        "clipped_shadows": float((luma8 <= 4).mean()),
        "contrast": contrast,
        "dynamic_range": float(p99 - p1),
        "local_contrast": local,
        "color_cast": _color_cast(rgb),
        "noise": _noise_sigma(luma8),
        "sharpness": lap / (contrast + 1e-3),
    }


def _analysis_size(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 3:
        raise ValueError(f"expected an HxWx3 RGB image of at least 3x3 px, got shape {image.shape}")
    from relightflow.images import resize_max_side

    return resize_max_side(image, ANALYSIS_SIDE)


def penalties(stats: Mapping[str, np.ndarray | float]) -> dict[str, np.ndarray]:
    """Cost per rule of ``PENALTIES`` (``weight * log(1 + d^2)``); works on scalars or arrays of stats."""
    out = {}
    for name, (stat, direction, centre, scale, weight) in PENALTIES.items():
        value = np.asarray(stats[stat], dtype=np.float64) - centre
        excess = np.abs(value) if direction == 0 else np.maximum(direction * value, 0.0)
        out[name] = weight * np.log1p((excess / scale) ** 2)
    return out


def score_from_stats(stats: Mapping[str, np.ndarray | float]) -> np.ndarray:
    """``exp(-sum of costs)``: 1 for a clean, well exposed image, lower the more and the worse its faults."""
    return np.exp(-sum(penalties(stats).values()))


def lighting_score(image: np.ndarray) -> float:
    """Lighting score of one ``HxWx3 uint8`` RGB image; higher = better lit (see the module docstring)."""
    return float(score_from_stats(measure(image)))
