"""Lighting score from measured image statistics: no weights, deterministic, a few ms per image.

Every statistic is measured on the image downscaled so its longer side is at most ``ANALYSIS_SIDE`` px
(sRGB values scaled to [0, 1]; luma ``Y = 0.2126 R + 0.7152 G + 0.0722 B``):

======================  =====================================================================  ==========
statistic               measure                                                                bad when
======================  =====================================================================  ==========
``exposure_stops``      log2 of the linearised mean luma over middle grey (0.18)               abs > 0.75
``clipped_highlights``  fraction of pixels with a channel >= 250/255                           > 0.01
``clipped_shadows``     fraction of pixels with luma <= 4/255                                  > 0.02
``contrast``            RMS contrast: standard deviation of luma                               < 0.12
``dynamic_range``       1st-99th percentile spread of luma                                     < 0.55
``local_contrast``      mean abs(luma - Gaussian blur of luma, sigma = 2 % of the side)        < 0.025
``color_cast``          mean chroma of the image over its chroma spread, CIELAB (a*, b*)       > 2
``noise``               Immerkaer's noise sigma on the luma (8-bit units)                      > 5
``sharpness``           mean abs(Laplacian) over the luma standard deviation                   < 0.03
======================  =====================================================================  ==========

Each statistic gives a penalty ``p >= 0`` that is 0 inside its tolerance and grows linearly outside
(``PENALTIES``: tolerance, scale); the score is ``exp(-sum(weight * p))`` in (0, 1], 1 = nothing wrong.
Harsh lighting is caught by contrast above 0.32 and by clipping; flat, murky lighting by low contrast,
range and local contrast. A low-key portrait is penalised for its exposure: this score ranks
*well-exposed, clean* lighting first, it does not judge taste.
"""

from __future__ import annotations

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

# name -> (statistic, direction, tolerance, scale, weight). direction +1: bad above tolerance, -1: below.
PENALTIES: dict[str, tuple[str, int, float, float, float]] = {
    "underexposed": ("exposure_stops", -1, -0.75, 1.0, 1.0),
    "overexposed": ("exposure_stops", +1, 0.75, 1.0, 1.0),
    "clipped_highlights": ("clipped_highlights", +1, 0.01, 0.05, 1.0),
    "clipped_shadows": ("clipped_shadows", +1, 0.02, 0.10, 0.7),
    "flat": ("contrast", -1, 0.12, 0.08, 0.7),
    "harsh": ("contrast", +1, 0.32, 0.08, 0.5),
    "low_range": ("dynamic_range", -1, 0.55, 0.30, 0.7),
    "murky": ("local_contrast", -1, 0.025, 0.02, 0.5),
    "color_cast": ("color_cast", +1, 2.0, 1.5, 0.4),
    "noisy": ("noise", +1, 5.0, 6.0, 0.5),
    "blurry": ("sharpness", -1, 0.03, 0.03, 0.3),
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


def measure(image: np.ndarray) -> dict[str, float]:
    """The statistics of ``STAT_NAMES`` for one ``HxWx3 uint8`` RGB image."""
    rgb = np.ascontiguousarray(_analysis_size(np.asarray(image, dtype=np.uint8)))
    srgb = rgb.astype(np.float32) / 255.0
    luma = srgb @ LUMA
    mean_linear = float(_srgb_to_linear(np.float32(luma.mean())))
    p1, p99 = np.percentile(luma, [1, 99])
    sigma = max(1.0, 0.02 * max(luma.shape))
    local = float(np.abs(luma - cv2.GaussianBlur(luma, (0, 0), sigma)).mean())
    luma8 = np.clip(luma * 255.0 + 0.5, 0, 255).astype(np.uint8)
    lap = float(np.abs(cv2.Laplacian(luma, cv2.CV_32F)).mean())
    contrast = float(luma.std())
    return {
        "exposure_stops": float(np.log2((mean_linear + 1e-4) / MIDDLE_GREY)),
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
    """Penalty per rule of ``PENALTIES`` (0 inside tolerance); works on scalars or arrays of stats."""
    out = {}
    for name, (stat, direction, tolerance, scale, _) in PENALTIES.items():
        excess = direction * (np.asarray(stats[stat], dtype=np.float64) - tolerance)
        out[name] = np.maximum(excess, 0.0) / scale
    return out


def score_from_stats(stats: Mapping[str, np.ndarray | float]) -> np.ndarray:
    """``exp(-sum(weight * penalty))``: 1 for a clean, well exposed image, towards 0 the worse it gets."""
    pens = penalties(stats)
    total = sum(PENALTIES[name][4] * p for name, p in pens.items())
    return np.exp(-total)


def lighting_score(image: np.ndarray) -> float:
    """Lighting score of one ``HxWx3 uint8`` RGB image; higher = better lit (see the module docstring)."""
    return float(score_from_stats(measure(image)))
