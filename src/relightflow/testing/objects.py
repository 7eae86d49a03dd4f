"""Rendered still lifes with known reflectance, in the manner of the MIT intrinsic-images objects.

One to three smooth objects (ellipsoids with a bumpy height relief) with painted albedo (Voronoi patches,
stripes, spots, smooth variation) stand in front of a dark or textured backdrop, lit by a directional key
light with cast shadows and an ambient term. The same ``seed`` gives the same objects and paint under any
light, so an albedo estimate can be checked against the truth and for agreement across lights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from relightflow.testing import camera
from relightflow.testing.faces import Layers
from relightflow.testing.shading import (
    LIGHT_COLORS,
    Light,
    ellipsoid,
    fbm,
    mondrian,
    pattern,
    relief_normals,
    shade,
    zbuffer,
)

PAINTS = np.array([[0.75, 0.72, 0.65], [0.62, 0.12, 0.08], [0.10, 0.25, 0.55], [0.80, 0.62, 0.10],
                   [0.12, 0.45, 0.18], [0.05, 0.05, 0.05], [0.45, 0.30, 0.20], [0.55, 0.55, 0.58],
                   [0.70, 0.35, 0.45]])  # fmt: skip


@dataclass(frozen=True)
class ObjectScene:
    """Light on a still life; the objects and their paint come from ``seed``."""

    azimuth: float = -40.0  # degrees, as :class:`relightflow.testing.faces.FaceScene`
    elevation: float = 30.0
    ambient: float = 0.1
    color_temperature: str = "neutral"
    backdrop: str = "dark"  # dark | textured
    ev: float = 0.0
    size: int = 256
    seed: int = 0


def _paint(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    n = shape[0]
    kind = rng.integers(0, 3)
    if kind == 0:
        albedo = mondrian(shape, rng, int(rng.integers(4, 14)), PAINTS)
    elif kind == 1:
        albedo = pattern(shape, rng, PAINTS[rng.integers(len(PAINTS))], scale=0.08 * n)
    else:
        albedo = PAINTS[rng.integers(len(PAINTS))] * np.ones(shape + (3,))
        spots = fbm(shape, rng, base=5, octaves=2) > 0.35
        albedo[spots] = PAINTS[rng.integers(len(PAINTS))]
    return np.clip(albedo * (1.0 + 0.08 * fbm(shape, rng, base=6, octaves=3))[..., None], 0.01, 0.95)


def _objects(scene: ObjectScene, rng: np.random.Generator):
    n = scene.size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    parts = []
    for _ in range(int(rng.integers(1, 4))):
        rx, ry = rng.uniform(0.12, 0.3, 2) * n
        cx, cy = rng.uniform(0.3, 0.7) * n, rng.uniform(0.35, 0.65) * n
        rz = rng.uniform(0.6, 1.0) * min(rx, ry)
        inside, depth, base, w = ellipsoid(xx, yy, (cx, cy, rng.uniform(0.2, 0.4) * n), (rx, ry, rz))
        bumps = 0.04 * rz * fbm((n, n), rng, base=3, octaves=2) * w
        parts.append((inside, depth + bumps, relief_normals(base, w, bumps, rz), _paint((n, n), rng)))
    index, depth, normals, albedo = zbuffer(parts)
    return index >= 0, depth, normals, albedo


def object_layers(scene: ObjectScene | None = None, **kwargs) -> Layers:
    """Linear radiance (metered like a camera, ``ev`` applied) and diffuse albedo of a still life."""
    scene = scene or ObjectScene(**kwargs)
    rng = np.random.default_rng(scene.seed)
    n = scene.size
    mask, depth, normals, albedo = _objects(scene, rng)
    backdrop = (
        0.03 if scene.backdrop == "dark" else rng.uniform(0.2, 0.5) * (1 + 0.15 * fbm((n, n), rng))[..., None]
    )
    albedo[~mask] = (np.ones((n, n, 3)) * backdrop)[~mask]
    depth = np.where(mask, depth, 0.0)
    normals[~mask] = [0.0, 0.0, 1.0]
    light = Light(scene.azimuth, scene.elevation, LIGHT_COLORS[scene.color_temperature])
    radiance = shade(depth, normals, albedo, [light], scene.ambient, specular=0.03)
    radiance *= camera.meter(radiance) * 2.0**scene.ev
    return Layers(radiance, albedo, mask, asdict(scene))


def render_objects(scene: ObjectScene | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render ``(image uint8 HxWx3, object mask HxW bool, ground truth dict)`` of a still life."""
    layers = object_layers(scene, **kwargs)
    image = camera.develop(layers.radiance, np.random.default_rng(layers.truth["seed"] + 7_919))
    return image, layers.mask, layers.truth
