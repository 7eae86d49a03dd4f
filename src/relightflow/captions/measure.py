"""Lighting attributes measured from the pixels: direction, colour temperature, contrast, key.

No model: every attribute is a statistic of the (linearised) image, inside the subject mask when one is
given. Conventions match :mod:`relightflow.testing`: ``horizontal='left'`` means the light comes from the
image's left (viewer's left); ``vertical='above'`` means from the top of the frame.

* Direction: the face's shading is fitted with ``a + l . n`` (Lambertian with ambient), ``n`` the
  normals of an ellipsoid laid over the face, per cell of a grid and on skin pixels only (rgb chromaticity
  of the face's centre; hair, eyes, beard and background cells are dropped, deep-shadow cells kept);
  ``l`` gives the light's azimuth and elevation in degrees, so "front" / "level" mean a light within
  ``SIDE_ANGLE`` / ``VERTICAL_ANGLE`` of the camera axis. The face is found in the subject mask's head
  (the mask above the neck; from the hairline, or the crown, down to the chin) or, without a mask, by the
  Haar face detector. Measured on rendered portraits (``benchmarks/eval_signals.py``): with the mask,
  vertical right in ~85-95 % of faces lit >= 35 degrees above or below, left / right in ~95 %; without
  a mask much less (no face found in ~half of them): **pass the subject mask** when there is one.
  Without a usable face: the luminance along the mask's occluding contour is fitted with
  ``a + b·nx + c·ny`` (per-sector medians), or, without a mask, a plane is fitted to the low-pass
  log-luminance of the frame (light falls off away from the source); only a strong vertical slope counts.
  Each axis gets a confidence in [0, 1] (``horizontal_confidence``, ``vertical_confidence``; and
  ``direction_confidence`` for the combined word): callers can leave unsure directions out of captions.
* Back light (mask only): a subject much darker than its immediate surround.
* Colour temperature: grey-world illuminant estimate (Minkowski p-norm, ``MINKOWSKI_P``) over the
  unsaturated pixels of the frame — of the background when a mask is given, since skin and clothes bias
  it — as ``log2(R/B)`` (grey is 0); the light's chroma names strongly coloured lights.
* Contrast (stops between the 5th and 95th luminance percentile), hardness (from contrast) and key
  (median brightness).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
# face fit (the direction)
SIDE_ANGLE = 10.0  # |azimuth| (degrees) beyond this is a side light, within it "front"
VERTICAL_ANGLE = 12.0  # |elevation| (degrees) beyond this is "above" / "below", within it "level"
FACE_GRID = 7  # cells per axis over the face's ellipse
HEAD_ASPECT = 1.3  # height / width of a head (hair included), to complete a head cut by the frame
NECK_RATIO = 0.6  # below the head's widest row, the first row this much narrower is the chin / neck
FACE_WIDTH = 0.9  # the face's half-width / the head's (hair included)
FACE_MIN_HEIGHT, FACE_MAX_HEIGHT = 0.45, 0.7  # bounds of the face's half-height / the head's
FACE_DEPTH = 1.3  # depth of the face's ellipsoid / its half-width (> 1: flatter than a sphere)
BOX_FACE = (0.07, 0.47, 0.43)  # Haar box (x, y, w, h) -> face: centre y + 0.07 h, half-axes 0.47 w, 0.43 h
SKIN_CHROMA_TOLERANCE = 0.08  # max L1 distance of a skin pixel's rgb chromaticity to the face centre's
SPREAD_FACTOR, TOL_MIN = 4.0, 0.03  # the tolerance is SPREAD_FACTOR x the centre's own spread, >= TOL_MIN
DARK_NOISE = 0.01  # dark pixels' tolerance widens by SKIN_CHROMA_TOLERANCE x DARK_NOISE / (r + g + b + it)
MIN_SKIN_FRACTION = 0.3  # a face cell is used when at least this fraction of it is skin
SHADOW_CELL = 0.15  # ... or when it is darker than this x the bright skin cells (deep shadow: used as is)
DARK_MATERIAL = 0.3  # a cell darker than this fraction of its fitted shading is another material: dropped
MIN_HEAD_PIXELS, MIN_FACE_CELLS = 150, 8
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


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in working-size pixels and the pixels it may use (a head, or a face within it)."""

    cx: float
    cy: float
    rx: float
    ry: float
    region: np.ndarray


def _neck_row(width: np.ndarray, top: int, bottom: int) -> int:
    """The row where the head ends: below the widest row of the subject's upper half, the first row
    narrower than ``NECK_RATIO`` of it (the chin meeting the neck), or the narrowest row before the width
    grows again (shoulders); ``bottom + 1`` when neither exists (a head alone)."""
    widest = top + int(np.argmax(width[top : top + max(3, (bottom - top + 1) // 2)]))
    below = width[widest : bottom + 1]
    narrow = np.flatnonzero(below < NECK_RATIO * width[widest])
    k = int(np.argmin(below))
    candidates = [int(narrow[0])] if narrow.size else []
    if below[k] < 0.85 * width[widest] and widest + k < bottom - 2:
        candidates.append(k)
    return widest + min(candidates) if candidates else bottom + 1


def find_head(mask: np.ndarray) -> Ellipse | None:
    """The head of a subject mask as an ellipse: the mask above the neck, from its moments.

    A head cut by the top of the frame (a close crop) is completed: its half-height is taken from its
    width (``HEAD_ASPECT``), its centre that far above the chin.
    """
    rows = np.nonzero(mask.any(axis=1))[0]
    top, bottom = int(rows.min()), int(rows.max())
    width = np.convolve(mask.sum(axis=1).astype(np.float64), np.ones(5) / 5, mode="same")
    neck = _neck_row(width, top, bottom)
    region = mask.copy()
    region[neck:] = False
    ys, xs = np.nonzero(region)
    if len(ys) < MIN_HEAD_PIXELS:
        return None
    cx, cy, rx, ry = float(xs.mean()), float(ys.mean()), 2.0 * float(xs.std()), 2.0 * float(ys.std())
    if top == 0:  # cut by the frame: moments understate the height and put the centre too low
        rx = float(np.percentile(region.sum(axis=1)[region.any(axis=1)], 90)) / 2.0
        ry = HEAD_ASPECT * rx
        cy = min(neck, bottom + 1) - 0.95 * ry
    return Ellipse(cx, cy, rx, ry, region)


def skin_mask(linear: np.ndarray, region: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` with the chromaticity of the bright pixels of ``centre`` (a face's skin).

    Chroma is measured on a slightly blurred image; the tolerance follows the centre's own spread
    (``SPREAD_FACTOR``, within ``TOL_MIN`` .. ``SKIN_CHROMA_TOLERANCE``) and widens for dark pixels, whose
    chroma is noisier (``DARK_NOISE``). Shading does not change chroma under one light colour.
    """
    smooth = cv2.GaussianBlur(linear, (0, 0), 1.2)
    total = smooth.sum(axis=-1)
    chroma = smooth / (total[..., None] + _EPS)
    pool = centre & region
    if pool.sum() >= 20:
        pool &= total > np.percentile(total[pool], 30)
    sample = chroma[pool if pool.sum() >= 20 else region]
    reference = np.median(sample, axis=0)
    spread = float(np.median(np.abs(sample - reference).sum(axis=-1)))
    tolerance = float(np.clip(SPREAD_FACTOR * spread, TOL_MIN, SKIN_CHROMA_TOLERANCE))
    noise = DARK_NOISE / (total + DARK_NOISE)
    return region & (np.abs(chroma - reference).sum(axis=-1) < tolerance + SKIN_CHROMA_TOLERANCE * noise)


def _ellipse_mask(shape: tuple[int, ...], e: Ellipse, scale: float = 1.0) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((xx - e.cx) / e.rx) ** 2 + ((yy - e.cy) / e.ry) ** 2 < scale**2


def face_of_head(linear: np.ndarray, head: Ellipse) -> tuple[Ellipse, np.ndarray]:
    """The face within a head and its skin: from the first row of the head that is mostly skin (the
    hairline, or the crown of a bald head) down to the chin, ``FACE_WIDTH`` of the head wide."""
    guess = Ellipse(head.cx, head.cy + 0.25 * head.ry, 0.6 * head.rx, 0.5 * head.ry, head.region)
    skin = skin_mask(linear, head.region, _ellipse_mask(linear.shape, guess))
    rows = np.nonzero(head.region.any(axis=1))[0]
    chin = min(float(rows.max()), head.cy + head.ry)
    fraction = skin.sum(axis=1) / np.maximum(head.region.sum(axis=1), 1)
    mostly = np.nonzero((fraction >= 0.5) & (np.arange(len(fraction)) < chin))[0]
    top = float(mostly.min()) if mostly.size else head.cy - head.ry
    top = max(top, chin - 2.0 * FACE_MAX_HEIGHT * head.ry)  # skin down the neck is no forehead
    top = min(top, chin - 2.0 * FACE_MIN_HEIGHT * head.ry)  # a fringe or a shadow hides the forehead
    face = Ellipse(head.cx, (top + chin) / 2, FACE_WIDTH * head.rx, (chin - top) / 2, head.region)
    return face, skin


def face_of_box(linear: np.ndarray, box: tuple[int, int, int, int]) -> tuple[Ellipse, np.ndarray]:
    """The face ellipse of a face detector's box ``(x, y, w, h)`` (``BOX_FACE``: centre offset, half-axes)
    and its skin."""
    x, y, w, h = box
    dy, half_w, half_h = BOX_FACE
    region = np.ones(linear.shape[:2], dtype=bool)
    face = Ellipse(x + w / 2, y + h / 2 + dy * h, half_w * w, half_h * h, region)
    inner = Ellipse(face.cx, face.cy, 0.6 * face.rx, 0.6 * face.ry, region)
    return face, skin_mask(linear, _ellipse_mask(linear.shape, face), _ellipse_mask(linear.shape, inner))


def _face_cells(
    lum: np.ndarray, face: Ellipse, skin: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell of a ``FACE_GRID`` grid over the face ellipse: mean template normal, median luminance of
    its skin pixels, and their count. Cells mostly of another albedo (hair, eyes, beard, background) are
    dropped, so their darkness is not read as shading."""
    h, w = lum.shape
    yy, xx = np.mgrid[0:h, 0:w]
    u, v = (xx - face.cx) / face.rx, (yy - face.cy) / face.ry
    r2 = u * u + v * v
    inside = face.region & (r2 < 0.92)
    if inside.sum() < MIN_HEAD_PIXELS:
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0)
    normals = np.stack([u, v, np.sqrt(np.clip(1.0 - r2, 0.0, 1.0)) * FACE_DEPTH], axis=-1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True) + 1e-9
    cell = (np.clip(((u + 1) / 2 * FACE_GRID).astype(int), 0, FACE_GRID - 1) * FACE_GRID
            + np.clip(((v + 1) / 2 * FACE_GRID).astype(int), 0, FACE_GRID - 1))  # fmt: skip
    cells, lums, norms, is_skin = cell[inside], lum[inside], normals[inside], skin[inside]
    rows = []
    for k in np.unique(cells):
        sel = cells == k
        sel_skin = sel & is_skin
        if sel_skin.sum() >= max(5, MIN_SKIN_FRACTION * sel.sum()):
            rows.append(
                (*norms[sel_skin].mean(axis=0), float(np.median(lums[sel_skin])), float(sel_skin.sum()), 1.0)
            )
        elif sel.sum() >= 5:  # maybe a cell in deep shadow, where chroma is too noisy to tell skin
            rows.append((*norms[sel].mean(axis=0), float(np.median(lums[sel])), float(sel.sum()), 0.0))
    if not rows:
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0)
    table = np.array(rows)
    lit = table[table[:, 5] > 0, 3]
    reference = float(np.percentile(lit, 90)) if lit.size else 0.0
    keep = (table[:, 5] > 0) | (table[:, 3] < SHADOW_CELL * reference)
    return table[keep, :3], table[keep, 3], table[keep, 4]


def _robust_lstsq(design: np.ndarray, target: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, float]:
    """Weighted least squares with three Tukey-biweight re-weightings; returns (coefficients, weighted R²)."""
    w = weight.copy()
    coef = np.linalg.lstsq(design * w[:, None], target * w, rcond=None)[0]
    for _ in range(3):
        resid = target - design @ coef
        scale = 1.4826 * float(np.median(np.abs(resid))) + 1e-6
        tukey = np.clip(1.0 - (resid / (4.685 * scale)) ** 2, 0.0, 1.0) ** 2
        w = weight * tukey
        coef = np.linalg.lstsq(design * w[:, None], target * w, rcond=None)[0]
    resid = target - design @ coef
    mean = np.average(target, weights=w**2 + 1e-12)
    r2 = 1.0 - float(np.sum(w**2 * resid**2)) / max(float(np.sum(w**2 * (target - mean) ** 2)), 1e-12)
    return coef, r2


def fit_face_light(lum: np.ndarray, face: Ellipse, skin: np.ndarray) -> dict[str, float] | None:
    """Light direction from the shading of a face, modelled as a (flattened) ellipsoid.

    Per-cell skin luminance is fitted with ``a + l . n`` (Lambertian shading with ambient; ``n`` the
    ellipsoid's normal at the cell), robustly; ``l`` points to the light: its azimuth and elevation in
    degrees (0, 0 = from the camera; azimuth < 0 = from the image's left; elevation > 0 = from above),
    the fit's R² and its number of cells. None when too few cells show skin.
    """
    normals, lums, counts = _face_cells(lum, face, skin)
    if len(lums) < MIN_FACE_CELLS:
        return None
    design = np.column_stack([np.ones(len(lums)), normals])
    target, weight = lums / max(float(np.median(lums)), _EPS), np.sqrt(counts)
    coef, r2 = _robust_lstsq(design, target, weight)
    for _ in range(2):  # cells far darker than their shading predicts are another material (hair): drop
        predicted = design @ coef
        keep = target >= DARK_MATERIAL * np.maximum(predicted, 0.05 * float(predicted.max()))
        if keep.all() or keep.sum() < MIN_FACE_CELLS:
            break
        design, target, weight = design[keep], target[keep], weight[keep]
        coef, r2 = _robust_lstsq(design, target, weight)
    lx, ly, lz = coef[1:]
    if math.hypot(lx, ly, lz) < 1e-6:
        return None
    return {
        "azimuth": math.degrees(math.atan2(lx, lz)), "elevation": math.degrees(math.atan2(-ly, math.hypot(lx, lz))),
        "strength": math.hypot(lx, ly, lz), "r2": r2, "cells": len(lums),
    }  # fmt: skip


def find_face(
    image: np.ndarray, linear: np.ndarray, mask: np.ndarray | None
) -> tuple[Ellipse | None, np.ndarray | None, str]:
    """The face to fit and its skin: from the mask's head or, without a mask, from the Haar face
    detector; and which of the two (``head`` | ``face``)."""
    if mask is not None:
        head = find_head(mask)
        return (*face_of_head(linear, head), "head") if head is not None else (None, None, "")
    from relightflow.faces import detect_face

    box = detect_face(image, work_side=WORK_SIDE)
    return (*face_of_box(linear, box), "face") if box is not None else (None, None, "")


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


def _angle_confidence(angle: float, threshold: float, quality: float) -> float:
    """Confidence of a label decided by ``|angle| >= threshold``: distance to the threshold (20 degrees =
    sure on the side, 10 on the frontal side) times the fit's quality."""
    margin = (abs(angle) - threshold) / 20.0 if abs(angle) >= threshold else (threshold - abs(angle)) / 10.0
    return round(min(1.0, margin) * quality, 3)


def _slope_confidence(slope: float, threshold: float) -> float:
    margin = abs(abs(slope) - threshold) / threshold
    return round(min(1.0, margin), 3)


def _from_face(fit: dict[str, float], method: str) -> dict[str, Any]:
    az, el = fit["azimuth"], fit["elevation"]
    quality = min(1.0, max(0.0, (fit["r2"] - 0.2) / 0.5)) * min(1.0, fit["cells"] / 16)
    lx = math.sin(math.radians(az)) * math.cos(math.radians(el))
    return {
        "horizontal": _label(az, "left", "right", "front", SIDE_ANGLE),
        "vertical": _label(-el, "above", "below", "level", VERTICAL_ANGLE),
        "direction_x": round(lx, 4), "direction_y": round(-math.sin(math.radians(el)), 4),
        "light_azimuth": round(az, 1), "light_elevation": round(el, 1), "direction_method": method,
        "horizontal_confidence": _angle_confidence(az, SIDE_ANGLE, quality),
        "vertical_confidence": _angle_confidence(el, VERTICAL_ANGLE, quality),
    }  # fmt: skip


def _from_slopes(dx: float, dy: float, method: str) -> dict[str, Any]:
    # without a mask, ground planes and sky confound the vertical slope: only a strong one counts
    v_threshold = DIRECTION_THRESHOLD * (1 if method == "contour" else NOMASK_VERTICAL_FACTOR)
    return {
        "horizontal": _label(dx, "left", "right", "front", DIRECTION_THRESHOLD),
        "vertical": _label(dy, "above", "below", "level", v_threshold),
        "direction_x": round(dx, 4), "direction_y": round(dy, 4),
        "light_azimuth": None, "light_elevation": None, "direction_method": method,
        "horizontal_confidence": _slope_confidence(dx, DIRECTION_THRESHOLD),
        "vertical_confidence": _slope_confidence(dy, v_threshold),
    }  # fmt: skip


def direction_attributes(
    image: np.ndarray, linear: np.ndarray, lum: np.ndarray, mask: np.ndarray | None
) -> dict[str, Any]:
    """Horizontal / vertical light direction, back light, and a confidence in [0, 1] per attribute.

    The face fit (:func:`fit_face_light`) decides, on the mask's head or, without a mask, on a detected
    face; failing that, the subject's contour (mask) or a plane fitted to the frame's log-luminance.
    """
    face, skin, method = find_face(image, linear, mask)
    fit = fit_face_light(lum, face, skin) if face is not None else None
    if fit is not None:
        out = _from_face(fit, method)
    else:
        contour = _fit_contour(lum, mask) if mask is not None else None
        out = _from_slopes(*(contour or _fit_plane(lum, None)), "contour" if contour else "plane")
    backlit, ratio = _backlit(lum, mask)
    h, v = out["horizontal"], out["vertical"]
    h_conf, v_conf = out["horizontal_confidence"], out["vertical_confidence"]
    side_first = abs(out["direction_x"]) >= abs(out["direction_y"])
    if backlit:
        direction, confidence = "back", min(1.0, (BACKLIGHT_RATIO - ratio) / BACKLIGHT_RATIO * 2)
    elif h != "front" and (side_first or v == "level"):
        direction, confidence = h, h_conf
    elif v != "level":
        direction, confidence = v, v_conf
    else:
        direction, confidence = "front", min(h_conf, v_conf)
    out.update({"direction": direction, "backlit": backlit, "subject_surround_ratio": round(ratio, 4),
                "direction_confidence": round(confidence, 3)})  # fmt: skip
    return out


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
    out.update(direction_attributes(small, linear, lum, region))
    out.update(color_attributes(linear, region))
    tone = tone_attributes(small, lum, region)
    out.update(tone)
    out["light_type"] = light_type(out, tone)
    return out
