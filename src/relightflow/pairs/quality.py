"""The pair quality gate: how much a degraded input differs from its target, and whether that is learnable.

:func:`measure_change` compares a degraded input with its target (the original photo) at ``side`` px,
weighted by the feathered subject mask (inside) and by its complement (outside):

* ``delta_e_in`` / ``delta_e_out`` — mean CIEDE2000 colour difference (CIE L*a*b*, D65);
* ``ssim_in`` / ``ssim_out`` — mean SSIM of L* (Gaussian window, sigma 1.5: Wang et al. 2004);
* ``clipped_in`` — fraction of the subject crushed to black (L* < 2) or blown to white (L* > 98) in the
  input where the target was not: detail the model would have to invent.

Without a mask the whole frame is the subject and the ``*_out`` values are NaN. :func:`gate_reason` checks
a measurement against the bounds of its degradation kind (config ``pairs.quality.bounds``): a pair whose
input looks like its target teaches the model to ignore its instruction ("too little change"); one whose
subject lost its structure or detail cannot be undone ("subject wrecked").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import structural_similarity

from relightflow.pairs.filters import soft_mask

COLUMNS = ("delta_e_in", "delta_e_out", "ssim_in", "ssim_out", "clipped_in")
BOUND_KEYS = ("min_delta_e", "min_ssim", "max_clipped")
TOO_LITTLE = "too little change"
WRECKED = "subject wrecked"
CRUSHED_L, BLOWN_L = 2.0, 98.0  # L* below / above which a pixel holds no detail
SSIM_SIGMA = 1.5
SSIM_WINDOW = 2 * int(3.5 * SSIM_SIGMA + 0.5) + 1  # scikit-image's Gaussian window for that sigma (11 px)
MIN_SIDE = 16  # the shorter side is measured at no less (an SSIM window fits)
MIN_WEIGHT = 1.0  # a region with less total mask weight (pixels at ``side``) is not measured: NaN


def _small(image: np.ndarray, side: int) -> np.ndarray:
    """Area-downscale so the longer side is at most ``side``, the shorter at least :data:`MIN_SIDE` (never
    upscale)."""
    h, w = image.shape[:2]
    scale = min(1.0, max(side / max(h, w), MIN_SIDE / min(h, w)))
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two L* planes (NaN where the image is smaller than the Gaussian window)."""
    if min(a.shape) < SSIM_WINDOW:
        return np.full(a.shape, np.nan, np.float32)
    _, full = structural_similarity(a, b, data_range=100.0, gaussian_weights=True, sigma=SSIM_SIGMA,
                                    use_sample_covariance=False, full=True)  # fmt: skip
    return full


def to_lab(image: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65; L* in 0-100) of an sRGB uint8 image (scikit-image: exact sRGB decoding; OpenCV's
    float conversion is off by up to 0.2 L*)."""
    return rgb2lab(np.asarray(image, dtype=np.uint8)).astype(np.float32)


def _clipped(lightness: np.ndarray) -> np.ndarray:
    return (lightness < CRUSHED_L) | (lightness > BLOWN_L)


def _mean(values: np.ndarray, weight: np.ndarray) -> float:
    total = float(weight.sum())
    return round(float((values * weight).sum()) / total, 4) if total >= MIN_WEIGHT else math.nan


@dataclass(frozen=True)
class Reference:
    """A target prepared once for all its variants: L*a*b* at the measuring size and the mask weights."""

    lab: np.ndarray
    inside: np.ndarray  # soft mask weights in [0, 1]
    subject: np.ndarray  # inside > 0.5
    clipped: np.ndarray  # target pixels already without detail
    has_mask: bool
    shape: tuple[int, int]  # the target's own size
    side: int  # measuring size


def prepare(target: np.ndarray, mask: np.ndarray | None = None, side: int = 128) -> Reference:
    """The target (HxWx3 uint8) and its subject mask (bool, uint8 or float; None = whole frame) at ``side``."""
    lab = to_lab(_small(target, side))
    inside = soft_mask(mask, target.shape) if mask is not None else np.ones(target.shape[:2], np.float32)
    inside = _small(inside, side)
    return Reference(lab, inside, inside > 0.5, _clipped(lab[..., 0]), mask is not None, target.shape[:2], side)


def measure(degraded: np.ndarray, ref: Reference) -> dict[str, float]:
    """The :data:`COLUMNS` of one degraded input (the target's size) against ``ref``."""
    if degraded.shape[:2] != ref.shape:
        raise ValueError(f"degraded image is {degraded.shape[:2]}, its target {ref.shape}")
    lab = to_lab(_small(degraded, ref.side))
    delta_e = deltaE_ciede2000(ref.lab, lab, channel_axis=-1)
    ssim_map = _ssim_map(ref.lab[..., 0], lab[..., 0])
    outside = (1.0 - ref.inside) if ref.has_mask else np.zeros_like(ref.inside)
    lost = _clipped(lab[..., 0]) & ~ref.clipped
    n_subject = int(ref.subject.sum())
    return {
        "delta_e_in": _mean(delta_e, ref.inside), "delta_e_out": _mean(delta_e, outside),
        "ssim_in": _mean(ssim_map, ref.inside), "ssim_out": _mean(ssim_map, outside),
        "clipped_in": round(float(lost[ref.subject].sum()) / n_subject, 4) if n_subject else math.nan,
    }  # fmt: skip


def measure_change(
    degraded: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None, side: int = 128
) -> dict[str, float]:
    """:func:`measure` of one pair (prepare the target once with :func:`prepare` for several variants)."""
    return measure(degraded, prepare(target, mask, side))


def gate_reason(change: Mapping[str, float], kind: str, bounds: Mapping[str, Mapping[str, Any]]) -> str:
    """Why the pair fails the bounds of ``kind`` ('' = it passes). Reasons start with :data:`TOO_LITTLE`
    or :data:`WRECKED` before a colon (the class counted in the stats); NaN measurements pass."""
    b = bounds[kind]
    if change["delta_e_in"] < b["min_delta_e"]:
        return f"{TOO_LITTLE}: mean ΔE2000 {change['delta_e_in']:.2f} < {b['min_delta_e']} inside the subject"
    if change["clipped_in"] > b["max_clipped"]:
        return f"{WRECKED}: {change['clipped_in']:.0%} of it crushed or blown > {b['max_clipped']:.0%}"
    if change["ssim_in"] < b["min_ssim"]:
        return f"{WRECKED}: SSIM {change['ssim_in']:.3f} < {b['min_ssim']} inside the subject"
    return ""
