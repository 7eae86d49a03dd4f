"""Rendered scenes with known lighting, for tests, benchmarks and the demo data.

``render_scene`` draws a Lambertian head-and-shoulders figure (ellipsoid head on a torso) in front of a
textured wall, lit by one directional light plus ambient. Light direction, colour temperature and
exposure are known, so stages that measure or change lighting can be checked against ground truth.
Conventions: ``horizontal='left'`` means the light comes from the image's left (viewer's left), so the
subject's left side (small x) is brighter; ``vertical='above'`` means light from the top of the image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

LIGHT_COLORS = {
    "warm": (1.0, 0.78, 0.52),
    "neutral": (1.0, 1.0, 1.0),
    "cool": (0.62, 0.80, 1.0),
}
_AZIMUTH = {"left": -1.0, "front": 0.0, "right": 1.0}
_ELEVATION = {"above": 1.0, "level": 0.0, "below": -1.0}


@dataclass(frozen=True)
class Scene:
    """Ground truth of a rendered scene."""

    horizontal: str = "left"
    vertical: str = "level"
    color_temperature: str = "neutral"
    exposure: float = 1.0
    ambient: float = 0.25
    size: int = 256
    seed: int = 0

    def light_vector(self) -> np.ndarray:
        """Unit vector towards the light, image axes: +x right, +y down, +z towards the camera."""
        x = 0.85 * _AZIMUTH[self.horizontal]
        y = -0.6 * _ELEVATION[self.vertical]
        z = 0.55 if self.horizontal != "front" else 1.0
        v = np.array([x, y, z], dtype=np.float64)
        return v / np.linalg.norm(v)


def _ellipsoid(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, rx: float, ry: float):
    u, v = (xx - cx) / rx, (yy - cy) / ry
    r2 = u * u + v * v
    inside = r2 < 1.0
    nz = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    normals = np.stack([u, v, nz], axis=-1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True) + 1e-8
    return inside, normals


def _scene_linear(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(linear radiance before exposure, subject mask, albedo)`` of a scene (draws from ``rng``)."""
    n = scene.size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    head_in, head_n = _ellipsoid(xx, yy, 0.5 * n, 0.40 * n, 0.20 * n, 0.26 * n)
    body_in, body_n = _ellipsoid(xx, yy, 0.5 * n, 1.05 * n, 0.42 * n, 0.36 * n)
    mask = head_in | body_in
    normals = np.where(head_in[..., None], head_n, body_n)
    light = scene.light_vector()
    lambert = np.clip(normals @ light, 0.0, None)
    skin = np.array([0.82, 0.62, 0.50]) * (1.0 + 0.04 * rng.standard_normal(3))
    cloth = rng.uniform(0.25, 0.6, size=3)
    albedo = np.where(head_in[..., None], skin, cloth)
    # wall: gentle texture, lit by the same light with a horizontal falloff towards the light side
    wall_albedo = np.array([0.55, 0.55, 0.52]) + 0.05 * rng.standard_normal((n, n, 1)).clip(-2, 2)
    falloff = 0.55 + 0.35 * (light[0] * (xx / n - 0.5) * 2) * 0.5 - 0.2 * light[1] * (yy / n - 0.5)
    wall_shading = np.clip(falloff, 0.15, 1.0)[..., None]
    color = np.array(LIGHT_COLORS[scene.color_temperature])
    shading = scene.ambient + (1.0 - scene.ambient) * lambert[..., None] * color
    subject = albedo * shading
    wall = wall_albedo * (scene.ambient + (1 - scene.ambient) * wall_shading * color)
    linear = np.where(mask[..., None], subject, wall)
    return linear, mask, np.where(mask[..., None], albedo, wall_albedo)


def scene_layers(scene: Scene | None = None, **kwargs):
    """The :class:`relightflow.testing.faces.Layers` of :func:`render_scene`: linear radiance (exposure
    applied, before clipping and encoding), albedo, subject mask and ground truth."""
    from relightflow.testing.faces import Layers

    scene = scene or Scene(**kwargs)
    linear, mask, albedo = _scene_linear(scene, np.random.default_rng(scene.seed))
    return Layers(linear * scene.exposure, albedo, mask, asdict(scene))


def render_scene(scene: Scene | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render ``(image uint8 HxWx3, subject mask HxW bool, ground-truth dict)``."""
    scene = scene or Scene(**kwargs)
    rng = np.random.default_rng(scene.seed)
    linear, mask, _ = _scene_linear(scene, rng)
    srgb = np.clip(linear * scene.exposure, 0.0, 1.0) ** (1 / 2.2)
    image = np.clip(srgb * 255.0 + rng.normal(0, 1.0, srgb.shape), 0, 255).astype(np.uint8)
    return image, mask, asdict(scene)


def scene_grid(size: int = 128) -> list[Scene]:
    """All combinations of direction × colour temperature at normal exposure (18 scenes)."""
    return [
        Scene(horizontal=h, vertical=v, color_temperature=c, size=size, seed=i)
        for i, (h, v, c) in enumerate(
            (h, v, c) for h in _AZIMUTH for v in ("above", "level") for c in LIGHT_COLORS
        )
    ]
