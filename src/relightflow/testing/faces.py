"""Rendered portraits with a known light: a head with facial relief on a neck and torso, in front of a wall.

The head is an ellipsoid carrying a height relief (nose, brow ridge, eye sockets, cheekbones, lips, chin)
with hair, eyebrows, eyes and lips painted into a textured skin albedo; the torso wears a patterned cloth;
the wall behind has its own texture (or is a dark / bright backdrop, optionally with a bright window). A key
light at any azimuth / elevation (degrees, :func:`relightflow.testing.shading.light_vector`) casts shadows
(nose, brows, chin, the figure on the wall), an optional fill light adds a weaker second direction, and a
soft ambient term the sky. Shape, pose (yaw, pitch, roll), skin tone, hair, clothes and wall vary with
``seed``. Images are developed by the camera model of :mod:`relightflow.testing.camera`, metered like a
camera (``ev`` is the offset from the metered exposure).

``face_layers`` returns the linear radiance and the diffuse albedo (ground truth for intrinsic
decomposition); ``render_face`` the developed ``uint8`` image, the subject mask and the ground truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from relightflow.testing import camera
from relightflow.testing.shading import (
    LIGHT_COLORS,
    Light,
    ellipsoid,
    fbm,
    pattern,
    relief_normals,
    shade,
    zbuffer,
)

SKIN_TONES = np.array([[0.62, 0.44, 0.35], [0.52, 0.36, 0.27], [0.40, 0.26, 0.18], [0.26, 0.16, 0.11],
                       [0.15, 0.09, 0.06]])  # fmt: skip
HAIR_COLORS = np.array([[0.025, 0.02, 0.018], [0.07, 0.045, 0.03], [0.40, 0.30, 0.17], [0.33, 0.33, 0.33],
                        [0.22, 0.07, 0.03]])  # fmt: skip
BACKGROUNDS = ("wall", "dark", "bright", "window")


@dataclass(frozen=True)
class FaceScene:
    """A portrait's lighting and look; everything else about the figure comes from ``seed``."""

    azimuth: float = -45.0  # key light, degrees: 0 from the camera, -90 from the image's left, +90 right
    elevation: float = 20.0  # degrees, + from above
    fill_azimuth: float | None = None  # optional fill light (no shadows), degrees
    fill_elevation: float = 0.0
    fill_ratio: float = 0.3  # fill intensity relative to the key
    zoom: float = 1.0  # 1: head and shoulders; ~1.7: a close, FFHQ-like crop (hair and shoulders cut)
    ambient: float = 0.12  # sky / bounce light relative to the key
    color_temperature: str = "neutral"  # key light colour (LIGHT_COLORS)
    ev: float = 0.0  # exposure offset from the metered exposure, stops
    background: str = "wall"  # wall | dark | bright | window
    size: int = 256
    seed: int = 0

    def labels(self, side: float = 15.0, vertical: float = 15.0) -> dict[str, str]:
        """Coarse labels of the key light: horizontal left/right/front, vertical above/below/level."""
        h = "left" if self.azimuth <= -side else ("right" if self.azimuth >= side else "front")
        v = "above" if self.elevation >= vertical else ("below" if self.elevation <= -vertical else "level")
        return {"horizontal": h, "vertical": v}


@dataclass
class Layers:
    """What a render is made of: linear radiance (HDR, metered), diffuse albedo, subject mask, truth."""

    radiance: np.ndarray
    albedo: np.ndarray
    mask: np.ndarray
    truth: dict


def _face_relief(u: np.ndarray, v: np.ndarray, w: np.ndarray, rng: np.random.Generator, yaw: float):
    """Height relief of the face (fractions of the head's depth radius) and the painted-feature centres."""
    u0 = 0.9 * np.sin(yaw)
    uf = u - u0
    nose_len = rng.uniform(0.85, 1.15)
    t = np.clip((v + 0.22) / (0.45 * nose_len), 0.0, 1.0)
    nose_w = 0.06 + 0.06 * t
    tip_v = -0.22 + 0.45 * nose_len
    nose = (0.35 + 0.65 * t) * np.exp(-0.5 * (uf / nose_w) ** 2)
    nose *= np.exp(-0.5 * (np.maximum(v - tip_v, 0) / 0.035) ** 2) * np.exp(
        -0.5 * (np.maximum(-0.22 - v, 0) / 0.05) ** 2
    )
    brow = np.exp(-0.5 * ((v + 0.30) / 0.07) ** 2) * np.exp(-0.5 * (uf / 0.55) ** 4)
    sockets = sum(np.exp(-0.5 * (((uf - s) / 0.14) ** 2 + ((v + 0.12) / 0.10) ** 2)) for s in (-0.33, 0.33))
    eyeballs = sum(np.exp(-0.5 * (((uf - s) / 0.08) ** 2 + ((v + 0.12) / 0.05) ** 2)) for s in (-0.33, 0.33))
    cheeks = sum(np.exp(-0.5 * (((uf - s) / 0.16) ** 2 + ((v - 0.12) / 0.12) ** 2)) for s in (-0.45, 0.45))
    lips = np.exp(-0.5 * ((uf / 0.22) ** 2 + ((v - 0.47) / 0.06) ** 2))
    chin = np.exp(-0.5 * ((uf / 0.2) ** 2 + ((v - 0.74) / 0.08) ** 2))
    depth = rng.uniform(0.8, 1.2)
    relief = (0.30 * nose + depth * (0.07 * brow - 0.13 * sockets + 0.05 * eyeballs) + 0.04 * cheeks
              + 0.035 * lips + 0.04 * chin)  # fmt: skip
    return relief * w**0.5, u0


def _face_albedo(
    u: np.ndarray, v: np.ndarray, u0: float, skin: np.ndarray, hair: np.ndarray | None,
    rng: np.random.Generator, shape: tuple[int, int],
) -> np.ndarray:  # fmt: skip
    """Skin with texture, eyebrows, eyes, lips and hair, for head coordinates ``(u, v)``."""
    uf = u - u0
    texture = 1.0 + 0.07 * fbm(shape, rng, base=6, octaves=4)
    albedo = skin[None, None, :] * texture[..., None]
    cheek_red = 0.10 * sum(
        np.exp(-0.5 * (((uf - s) / 0.15) ** 2 + ((v - 0.2) / 0.1) ** 2)) for s in (-0.42, 0.42)
    )
    albedo = albedo * (1 + cheek_red[..., None] * np.array([0.5, -0.2, -0.2]))
    lips = ((uf / 0.2) ** 2 + ((v - 0.47) / 0.045) ** 2) < 1
    albedo[lips] = skin * np.array([0.85, 0.55, 0.55])
    brows = sum(
        ((uf - s) / 0.16) ** 2 + ((v + 0.31 - 0.08 * (uf - s) ** 2) / 0.03) ** 2 < 1 for s in (-0.33, 0.33)
    )
    albedo[brows.astype(bool)] = hair if hair is not None else skin * 0.5
    iris = rng.choice([np.array([0.06, 0.035, 0.02]), np.array([0.08, 0.12, 0.16])])
    for s in (-0.33, 0.33):
        eye = ((uf - s) / 0.10) ** 2 + ((v + 0.12) / 0.04) ** 2 < 1
        albedo[eye] = [0.55, 0.52, 0.5]
        albedo[((uf - s) / 0.035) ** 2 + ((v + 0.12) / 0.035) ** 2 < 1] = iris
    if hair is not None:
        if rng.random() < 0.15:  # beard
            albedo[(v > 0.38) & ~lips & (np.abs(uf) < 0.7)] = hair * 1.1
        if rng.random() < 0.5:  # a fringe over the forehead
            albedo[v < -0.5 + 0.3 * np.abs(uf) ** 2] = hair
    return albedo


def _hair(
    xx: np.ndarray, yy: np.ndarray, head: tuple[float, ...], uv: tuple[np.ndarray, np.ndarray],
    hair: np.ndarray, rng: np.random.Generator, n: int,
) -> tuple[np.ndarray, ...]:  # fmt: skip
    """A hair volume around the head's top (and sides, for long hair): (inside, depth, normals, albedo)."""
    cx, cy, rx, ry, rz = head
    u, v = uv
    inside, depth, normals, _ = ellipsoid(
        xx, yy, (cx, cy - 0.05 * ry, 0.55 * n), (1.1 * rx, 1.09 * ry, 1.06 * rz)
    )
    hairline = -0.45 + rng.uniform(-0.08, 0.12) + 0.25 * np.abs(u) ** 2
    sides = (np.abs(u) > 0.8) & (v < (0.55 if rng.random() < 0.4 else 0.0))
    streaks = 1.0 + 0.25 * fbm((n, n), rng, base=16, octaves=2)
    return inside & ((v < hairline) | sides), depth, normals, hair * streaks[..., None]


def _figure(scene: FaceScene, rng: np.random.Generator, n: int):
    """Parts (inside, depth, normals, albedo) of hair, head, neck and torso composited; the skin pixels;
    the head centre."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    scale = rng.uniform(0.9, 1.1)
    cx, cy = n * (0.5 + rng.uniform(-0.06, 0.06)), n * (0.38 + rng.uniform(-0.04, 0.04))
    rx, ry, rz = 0.16 * n * scale, 0.215 * n * scale * rng.uniform(0.95, 1.08), 0.17 * n * scale
    roll, yaw = np.radians(rng.uniform(-8, 8)), np.radians(rng.uniform(-15, 15))
    pitch = rng.uniform(-0.06, 0.06)  # shifts features up/down (fraction of the head's half-height)
    cos_r, sin_r = np.cos(roll), np.sin(roll)
    hx, hy = cx + (xx - cx) * cos_r + (yy - cy) * sin_r, cy - (xx - cx) * sin_r + (yy - cy) * cos_r
    inside, depth, base, w = ellipsoid(hx, hy, (cx, cy, 0.55 * n), (rx, ry, rz))
    u, v = (hx - cx) / rx, (hy - cy) / ry - pitch
    relief, u0 = _face_relief(u, v, w, rng, yaw)
    normals = relief_normals(base, w, relief * rz, rz)
    normals[..., :2] = np.stack([normals[..., 0] * cos_r - normals[..., 1] * sin_r,
                                 normals[..., 0] * sin_r + normals[..., 1] * cos_r], axis=-1)  # fmt: skip
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.1, 3)
    hair = None if rng.random() < 0.1 else HAIR_COLORS[rng.integers(len(HAIR_COLORS))]
    face_albedo = _face_albedo(u, v, u0, skin, hair, rng, (n, n))
    head = (inside, depth + relief * rz, normals, face_albedo)
    parts = [head] if hair is None else [head, _hair(hx, hy, (cx, cy, rx, ry, rz), (u, v), hair, rng, n)]
    neck_r = 0.075 * n * scale
    dxn = (xx - cx) / neck_r
    neck_in = (np.abs(dxn) < 1) & (yy > cy) & (yy < 0.85 * n)
    neck_w = np.sqrt(np.clip(1 - dxn**2, 0, 1))
    neck_n = np.stack([dxn, np.zeros_like(dxn), neck_w], axis=-1)
    neck = (neck_in, 0.47 * n + 0.5 * neck_r * neck_w, neck_n, np.broadcast_to(skin * 0.95, (n, n, 3)))
    t_in, t_depth, t_n, _ = ellipsoid(xx, yy, (0.5 * n, 1.0 * n, 0.38 * n), (0.44 * n, 0.3 * n, 0.2 * n))
    cloth = pattern((n, n), rng, rng.uniform(0.05, 0.6, 3), scale=0.06 * n)
    torso = (t_in, t_depth, t_n, cloth)
    index, depth, normals, albedo = zbuffer([*parts, neck, torso])
    skin_like = (index == 0) | (index == len(parts))
    return index >= 0, depth, normals, albedo, skin_like, (cx, cy)


def _background(scene: FaceScene, rng: np.random.Generator, shape: tuple[int, int]):
    """Wall albedo and an emissive term (a window) for the background kind."""
    tone = rng.uniform(0.25, 0.65) * rng.uniform(0.85, 1.15, 3)
    if scene.background == "dark":
        tone = tone * 0.08
    elif scene.background == "bright":
        tone = np.clip(tone * 1.6, 0, 0.9)
    texture = 1.0 + 0.12 * fbm(shape, rng, base=3, octaves=5)
    wall = tone[None, None, :] * texture[..., None]
    emissive = np.zeros(shape + (3,))
    if scene.background == "window":
        n = shape[0]
        x0 = rng.choice([0.02, 0.68]) * n
        window = np.zeros(shape, dtype=bool)
        window[int(0.05 * n) : int(0.55 * n), int(x0) : int(x0 + 0.3 * n)] = True
        emissive[window] = rng.uniform(3.0, 8.0) * np.array([0.9, 0.95, 1.0])
    return wall, emissive


def face_layers(scene: FaceScene | None = None, **kwargs) -> Layers:
    """Render the linear radiance (metered, ``ev`` applied) and diffuse albedo of a portrait."""
    scene = scene or FaceScene(**kwargs)
    rng = np.random.default_rng(scene.seed)
    n = round(scene.size * max(scene.zoom, 1.0))
    mask, depth, normals, albedo, skin, center = _figure(scene, rng, n)
    wall, emissive = _background(scene, rng, (n, n))
    depth = np.where(mask, depth, 0.0)
    normals[~mask] = [0.0, 0.0, 1.0]
    albedo[~mask] = wall[~mask]
    lights = [Light(scene.azimuth, scene.elevation, LIGHT_COLORS[scene.color_temperature])]
    if scene.fill_azimuth is not None and scene.fill_ratio > 0:
        lights.append(Light(scene.fill_azimuth, scene.fill_elevation, (scene.fill_ratio,) * 3, shadows=False))
    sky = scene.ambient * (0.75 + 0.25 * -normals[..., 1])  # a little more from above
    radiance = shade(depth, normals, albedo, lights, sky, specular=np.where(skin, 0.06, 0.0)) + emissive
    if n != scene.size:  # close framing: the head centred a little above the middle, as in FFHQ crops
        x0 = int(np.clip(round(center[0] - scene.size / 2), 0, n - scene.size))
        y0 = int(np.clip(round(center[1] - 0.47 * scene.size), 0, n - scene.size))
        window = (slice(y0, y0 + scene.size), slice(x0, x0 + scene.size))
        radiance, albedo, mask = radiance[window], albedo[window], mask[window]
    radiance *= camera.meter(radiance) * 2.0**scene.ev
    return Layers(radiance, albedo, mask, {**asdict(scene), **scene.labels()})


def render_face(scene: FaceScene | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render ``(image uint8 HxWx3, subject mask HxW bool, ground truth dict)`` of a portrait."""
    layers = face_layers(scene, **kwargs)
    seed = layers.truth["seed"]
    image = camera.develop(layers.radiance, np.random.default_rng(seed + 7_919), jpeg_quality=None)
    return image, layers.mask, layers.truth


def face_set(
    azimuths: tuple[float, ...],
    elevations: tuple[float, ...],
    n_seeds: int = 1,
    size: int = 192,
    **kwargs,
) -> list[FaceScene]:
    """Every azimuth x elevation x seed combination; backgrounds and colour temperatures cycle with the index."""
    temps = tuple(LIGHT_COLORS)
    scenes = []
    for i, (az, el, s) in enumerate((a, e, s) for s in range(n_seeds) for a in azimuths for e in elevations):
        extra = {"background": BACKGROUNDS[i % 3], "color_temperature": temps[(i // 3) % 3], **kwargs}
        scenes.append(FaceScene(az, el, size=size, seed=1000 * s + i, **extra))
    return scenes
