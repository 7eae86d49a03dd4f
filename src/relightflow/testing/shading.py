"""Shared pieces of the rendered test scenes: height-field geometry, directional lights with cast shadows,
Lambertian + Blinn-Phong shading, and procedural albedo textures.

Image axes: +x right, +y down, +z towards the camera; depth maps hold z in pixels (larger = nearer).
A light at ``azimuth`` (degrees, 0 = from the camera, -90 = from the image's left, +90 = from its right) and
``elevation`` (degrees, + = from above) points along ``(sin az cos el, -sin el, cos az cos el)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LIGHT_COLORS = {  # the key light's colour per colour temperature (linear RGB, max 1)
    "warm": (1.0, 0.78, 0.52),
    "neutral": (1.0, 1.0, 1.0),
    "cool": (0.62, 0.80, 1.0),
}


@dataclass(frozen=True)
class Light:
    """A directional light: angles in degrees, linear RGB intensity, whether it casts shadows."""

    azimuth: float
    elevation: float
    rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shadows: bool = True

    def vector(self) -> np.ndarray:
        return light_vector(self.azimuth, self.elevation)


def light_vector(azimuth: float, elevation: float) -> np.ndarray:
    """Unit vector towards a light at ``azimuth`` / ``elevation`` degrees (image axes, see the module doc)."""
    az, el = np.radians(azimuth), np.radians(elevation)
    return np.array([np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)])


def visibility(depth: np.ndarray, light: np.ndarray, softness: float = 2.0) -> np.ndarray:
    """Fraction of a directional light reaching each pixel of a height field (ray marching towards it).

    A point is shadowed when, somewhere along its ray towards the light, the surface rises above the ray;
    the shadow edge is softened by ``softness`` px of penumbra.
    """
    h, w = depth.shape
    planar = float(np.hypot(light[0], light[1]))
    if planar < 1e-3:
        return np.ones_like(depth, dtype=np.float32)
    dx, dy, rise = light[0] / planar, light[1] / planar, light[2] / planar
    depth32 = depth.astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    blocked = np.zeros_like(depth32)
    step = 1.0
    for k in range(1, int(1.5 * max(h, w) / step)):
        s = k * step
        mx, my = xx + np.float32(s * dx), yy + np.float32(s * dy)
        ahead = cv2.remap(depth32, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        blocked = np.maximum(blocked, ahead - (depth32 + s * rise))
        if s > 8 and k % 8 == 0 and not (ahead > depth32 + s * rise - 1).any():
            break
        step = 1.0 if s < 32 else 2.0
    vis = np.clip(1.0 - blocked / max(softness, 1e-3), 0.0, 1.0)
    return cv2.GaussianBlur(vis, (0, 0), 0.7)


def shade(
    depth: np.ndarray,
    normals: np.ndarray,
    albedo: np.ndarray,
    lights: list[Light],
    ambient: np.ndarray | float,
    specular: np.ndarray | float = 0.0,
    shininess: float = 30.0,
) -> np.ndarray:
    """Linear radiance: ``albedo * (ambient + sum_l rgb_l * vis_l * max(n.l, 0)) + specular highlights``."""
    irradiance = np.zeros(depth.shape + (3,))
    highlights = np.zeros(depth.shape + (3,))
    view = np.array([0.0, 0.0, 1.0])
    for light in lights:
        vec = light.vector()
        lambert = np.clip(normals @ vec, 0.0, None)
        vis = visibility(depth, vec) if light.shadows else 1.0
        irradiance += (lambert * vis)[..., None] * np.asarray(light.rgb)
        half = (vec + view) / np.linalg.norm(vec + view)
        spec = np.clip(normals @ half, 0.0, None) ** shininess * vis * (lambert > 0)
        highlights += spec[..., None] * np.asarray(light.rgb)
    ambient = np.asarray(ambient, dtype=np.float64)
    ambient = ambient[..., None] if ambient.ndim == 2 else ambient
    spec_w = np.asarray(specular, dtype=np.float64)
    spec_w = spec_w[..., None] if spec_w.ndim == 2 else spec_w
    return albedo * (ambient + irradiance) + spec_w * highlights


def fbm(shape: tuple[int, int], rng: np.random.Generator, base: int = 4, octaves: int = 4) -> np.ndarray:
    """Smooth random field in about [-1, 1]: octaves of bicubically upsampled noise grids."""
    h, w = shape
    out = np.zeros(shape, dtype=np.float64)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2**o
        grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    return out / total


def mondrian(shape: tuple[int, int], rng: np.random.Generator, cells: int, palette: np.ndarray) -> np.ndarray:
    """Piecewise-constant albedo: Voronoi cells (``cells`` seeds) painted with colours from ``palette``."""
    h, w = shape
    seeds = rng.uniform(0, 1, (cells, 2)) * [w, h]
    yy, xx = np.mgrid[0:h, 0:w]
    d2 = (xx[..., None] - seeds[:, 0]) ** 2 + (yy[..., None] - seeds[:, 1]) ** 2
    label = d2.argmin(axis=-1)
    colors = palette[rng.integers(0, len(palette), cells)]
    return colors[label]


def pattern(shape: tuple[int, int], rng: np.random.Generator, base: np.ndarray, scale: float) -> np.ndarray:
    """A fabric or paint pattern around colour ``base``: plain, stripes, checks or spots (``scale`` px)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    second = np.clip(base * rng.uniform(0.3, 1.6, 3), 0.02, 0.9)
    kind = rng.integers(0, 4)
    period = scale * rng.uniform(0.6, 1.4)
    if kind == 1:
        angle = rng.uniform(0, np.pi)
        on = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0.3
    elif kind == 2:
        on = (np.floor(xx / period) + np.floor(yy / period)) % 2 == 1
    elif kind == 3:
        on = (np.sin(xx * 2 * np.pi / period) * np.sin(yy * 2 * np.pi / period)) > 0.6
    else:
        on = np.zeros(shape, dtype=bool)
    texture = 1.0 + 0.06 * fbm(shape, rng, base=8, octaves=3)
    return np.where(on[..., None], second, base) * texture[..., None]


def ellipsoid(
    xx: np.ndarray, yy: np.ndarray, center: tuple[float, float, float], radii: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(inside, depth, normals, w)`` of the camera-facing half of an axis-aligned ellipsoid.

    ``w = sqrt(1 - u^2 - v^2)`` is the normalised depth (1 at the centre, 0 on the silhouette).
    """
    cx, cy, cz = center
    rx, ry, rz = radii
    u, v = (xx - cx) / rx, (yy - cy) / ry
    r2 = u * u + v * v
    inside = r2 < 1.0
    w = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    normals = np.stack([u / rx, v / ry, w / rz], axis=-1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True) + 1e-12
    return inside, cz + rz * w, normals, w


def relief_normals(base: np.ndarray, w: np.ndarray, relief: np.ndarray, rz: float) -> np.ndarray:
    """Normals of an ellipsoid surface (``base`` normals, normalised depth ``w``) plus a height ``relief``.

    Writing the ellipsoid normal as ``(-dz/dx, -dz/dy, 1)`` scaled by ``nz`` keeps it finite at the rim.
    """
    gy, gx = np.gradient(relief)
    nz = base[..., 2]
    out = np.stack([base[..., 0] - gx * nz, base[..., 1] - gy * nz, nz], axis=-1)
    out /= np.linalg.norm(out, axis=-1, keepdims=True) + 1e-12
    return out


def zbuffer(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Composite ``(inside, depth, normals, albedo)`` parts front to back; returns (index, depth, normals,
    albedo) with index -1 where no part covers a pixel."""
    shape = parts[0][0].shape
    depth = np.full(shape, -np.inf)
    index = np.full(shape, -1)
    normals = np.zeros(shape + (3,))
    albedo = np.zeros(shape + (3,))
    for k, (inside, z, n, a) in enumerate(parts):
        front = inside & (z > depth)
        depth[front], index[front] = z[front], k
        normals[front], albedo[front] = n[front], a[front]
    return index, depth, normals, albedo
