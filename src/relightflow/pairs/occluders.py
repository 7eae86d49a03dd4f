"""Occluder patterns that cast hard shadows: blinds, window frame, foliage, branches, fence, lattice.

Each generator returns ``(occlusion, params)``: a float32 ``HxW`` map in [0, 1] (1 = light blocked) and
the parameters it drew. Sizes are fractions of the image's shorter side, so a pattern looks the same at
256 px and 4096 px. Everything is vectorised (periodic coordinates, upsampled value noise, OpenCV line
drawing); no per-pixel Python loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

Params = dict[str, Any]
PATTERNS: dict[str, Callable[[np.random.Generator, int, int], tuple[np.ndarray, Params]]] = {}


def _register(fn):
    PATTERNS[fn.__name__] = fn
    return fn


def _r(x: float) -> float:
    return round(float(x), 4)


def _rotated(h: int, w: int, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in short-side units, rotated by ``angle_deg`` about the centre (u across, v along)."""
    s = float(min(h, w))
    y = (np.arange(h, dtype=np.float32)[:, None] - h / 2) / s
    x = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / s
    a = math.radians(angle_deg)
    return x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)


def _stripes(coord: np.ndarray, period: float, duty: float, phase: float) -> np.ndarray:
    """1 where ``coord`` falls in the first ``duty`` fraction of each period."""
    return (np.mod(coord / period + phase, 1.0) < duty).astype(np.float32)


@_register
def blinds(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, Params]:
    """Venetian blinds: 6-16 slats per short side, slat fraction 0.35-0.6, tilt ±25° (30 % vertical)."""
    p = {
        "slats": int(rng.integers(6, 17)),
        "duty": _r(rng.uniform(0.35, 0.6)),
        "angle": _r(rng.uniform(-25, 25) + (90.0 if rng.random() < 0.3 else 0.0)),
        "phase": _r(rng.random()),
    }
    _, v = _rotated(h, w, p["angle"])
    return _stripes(v, 1.0 / p["slats"], p["duty"], p["phase"]), p


@_register
def window(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, Params]:
    """Window frame: 1-3 x 2-4 panes, bars 1.5-4 % wide; half the time the wall around the window is dark."""
    p = {
        "rows": int(rng.integers(1, 4)),
        "cols": int(rng.integers(2, 5)),
        "bar": _r(rng.uniform(0.015, 0.04)),
        "extent": _r(rng.uniform(0.7, 1.4)),
        "center": [_r(rng.uniform(-0.25, 0.25)), _r(rng.uniform(-0.25, 0.25))],
        "dark_outside": bool(rng.random() < 0.5),
    }
    x, y = _rotated(h, w, 0.0)
    half = p["extent"] / 2
    u = (x - p["center"][0] + half) / p["extent"]  # 0..1 across the window
    v = (y - p["center"][1] + half) / p["extent"]
    bar = p["bar"] / p["extent"]
    bars = (np.abs(u * p["cols"] - np.round(u * p["cols"])) < bar * p["cols"] / 2) | (
        np.abs(v * p["rows"] - np.round(v * p["rows"])) < bar * p["rows"] / 2
    )
    inside = (u > 0) & (u < 1) & (v > 0) & (v < 1)
    occ = bars & inside
    if p["dark_outside"]:
        occ = occ | ~inside
    return occ.astype(np.float32), p


def value_noise(
    rng: np.random.Generator, h: int, w: int, cells: int, octaves: int, persistence: float
) -> np.ndarray:
    """Fractal value noise in [0, 1]: random grids of 2^k finer cells, upsampled bicubically and summed."""
    total = np.zeros((h, w), dtype=np.float32)
    amp, norm = 1.0, 0.0
    for octave in range(octaves):
        n = cells * 2**octave
        grid = rng.random((max(2, round(n * h / min(h, w))) + 1, max(2, round(n * w / min(h, w))) + 1))
        total += amp * cv2.resize(grid.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        norm += amp
        amp *= persistence
    return total / norm


@_register
def foliage(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, Params]:
    """Leaves: fractal noise (3-6 cells, 3-5 octaves, persistence 0.45-0.6) thresholded to 30-60 % cover."""
    p = {
        "cells": int(rng.integers(3, 7)),
        "octaves": int(rng.integers(3, 6)),
        "persistence": _r(rng.uniform(0.45, 0.6)),
        "cover": _r(rng.uniform(0.3, 0.6)),
    }
    noise = value_noise(rng, h, w, p["cells"], p["octaves"], p["persistence"])
    thr = float(np.quantile(noise[::4, ::4], 1.0 - p["cover"]))
    return np.clip((noise - thr) / 0.02 + 0.5, 0.0, 1.0), p


def _draw_branch(canvas, rng, start, angle, length, thick, depth):
    """One limb as a jittered polyline; side twigs recurse with half the thickness."""
    pts = [np.array(start, dtype=np.float64)]
    steps = int(rng.integers(5, 9))
    for _ in range(steps):
        angle += rng.normal(0, 0.25)
        pts.append(pts[-1] + length / steps * np.array([math.cos(angle), math.sin(angle)]))
    for i, (a, b) in enumerate(zip(pts[:-1], pts[1:], strict=True)):
        t = max(1, round(thick * (1 - 0.6 * i / steps)))
        cv2.line(canvas, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)), 255, t, cv2.LINE_AA)
        if depth > 0 and rng.random() < 0.6:
            side = angle + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
            _draw_branch(canvas, rng, b, side, length * rng.uniform(0.2, 0.4), thick * 0.5, depth - 1)


@_register
def branches(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, Params]:
    """Bare branches: 2-5 limbs entering from the edges, 1.2-3 % thick, with two levels of twigs."""
    s = min(h, w)
    p = {"limbs": int(rng.integers(2, 6)), "thickness": _r(rng.uniform(0.012, 0.03))}
    canvas = np.zeros((h, w), dtype=np.uint8)
    for _ in range(p["limbs"]):
        edge = int(rng.integers(4))
        t = rng.random()
        start = [(t * w, 0), (w, t * h), (t * w, h), (0, t * h)][edge]
        toward = math.atan2(h / 2 - start[1], w / 2 - start[0]) + rng.normal(0, 0.4)
        _draw_branch(canvas, rng, start, toward, s * rng.uniform(0.6, 1.1), p["thickness"] * s, depth=2)
    return canvas.astype(np.float32) / 255.0, p


@_register
def fence(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, Params]:
    """Picket fence: pickets every 6-14 % of the side, 45-70 % solid, 1-3 rails 2-4 % high, tilt ±10°."""
    p = {
        "period": _r(rng.uniform(0.06, 0.14)),
        "duty": _r(rng.uniform(0.45, 0.7)),
        "rails": sorted(_r(v) for v in rng.uniform(-0.35, 0.35, int(rng.integers(1, 4)))),
        "rail_height": _r(rng.uniform(0.02, 0.04)),
        "angle": _r(rng.uniform(-10, 10)),
        "phase": _r(rng.random()),
    }
    u, v = _rotated(h, w, p["angle"])
    occ = _stripes(u, p["period"], p["duty"], p["phase"]).astype(bool)
    for rail in p["rails"]:
        occ |= np.abs(v - rail) < p["rail_height"] / 2
    return occ.astype(np.float32), p


@_register
def lattice(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, Params]:
    """Garden lattice: square or diagonal grid, spacing 5-12 %, bars 12-30 % of the spacing."""
    p = {
        "style": str(rng.choice(["grid", "diagonal"])),
        "spacing": _r(rng.uniform(0.05, 0.12)),
        "bar": _r(rng.uniform(0.12, 0.3)),
        "phase": [_r(rng.random()), _r(rng.random())],
    }
    p["angle"] = _r(rng.uniform(-10, 10) + (45.0 if p["style"] == "diagonal" else 0.0))
    u, v = _rotated(h, w, p["angle"])
    occ = _stripes(u, p["spacing"], p["bar"], p["phase"][0]).astype(bool)
    occ |= _stripes(v, p["spacing"], p["bar"], p["phase"][1]).astype(bool)
    return occ.astype(np.float32), p


def random_affine(rng: np.random.Generator, occ: np.ndarray) -> tuple[np.ndarray, Params]:
    """Project the pattern: rotation ±15°, scale 0.85-1.2, shear ±0.2, shift ±10 % (reflected borders)."""
    h, w = occ.shape
    p = {
        "rotation": _r(rng.uniform(-15, 15)),
        "scale": _r(rng.uniform(0.85, 1.2)),
        "shear": _r(rng.uniform(-0.2, 0.2)),
        "shift": [_r(rng.uniform(-0.1, 0.1)), _r(rng.uniform(-0.1, 0.1))],
    }
    m = cv2.getRotationMatrix2D((w / 2, h / 2), p["rotation"], p["scale"])
    m[0, 1] += p["shear"]
    m[0, 2] += p["shift"][0] * w - p["shear"] * h / 2
    m[1, 2] += p["shift"][1] * h
    warped = cv2.warpAffine(occ, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return warped, p


def occluder(
    rng: np.random.Generator, h: int, w: int, pattern: str | None = None, softness: float | None = None
) -> tuple[np.ndarray, Params]:
    """A projected, penumbra-blurred occluder map; ``pattern`` None draws one of :data:`PATTERNS`.

    Penumbra blur sigma is 0.2-2 % of the shorter side (crisp sun to soft window light).
    """
    name = pattern or str(rng.choice(sorted(PATTERNS)))
    if name not in PATTERNS:
        raise ValueError(f"unknown occluder pattern {name!r}; known: {sorted(PATTERNS)}")
    occ, params = PATTERNS[name](rng, h, w)
    occ, affine = random_affine(rng, occ)
    soft = _r(rng.uniform(0.002, 0.02) if softness is None else softness)
    occ = cv2.GaussianBlur(occ, (0, 0), max(0.3, soft * min(h, w)), borderType=cv2.BORDER_REFLECT)
    return np.clip(occ, 0.0, 1.0), {"pattern": name, **params, "affine": affine, "penumbra": soft}
