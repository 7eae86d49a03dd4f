"""Demo images, made with no network: real photos that scikit-image and matplotlib ship, plus rendered scenes.

``materialize(root)`` writes them under ``root`` (idempotent: existing files are kept). The real photos
come from ``skimage.data`` and matplotlib's sample data (bundled in the wheels); the rendered scenes have a
known light direction and colour (``relightflow.testing.render_scene``), which later stages can be checked
against: the 18 combinations of direction × colour temperature plus ``extra_scenes`` more with light from
below and varied exposure and ambient. Two broken files are added on purpose so the demo shows the rejects
table at work. None of these images is used to pretrain the demo's base model
(:mod:`relightflow.testing.demo_base`), which :func:`write_base_model` installs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from relightflow.images import save_image
from relightflow.testing import Scene, render_scene, scene_grid

log = logging.getLogger(__name__)

# Colour photos bundled with scikit-image (all load offline); grayscale ones exercise mode handling.
SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
    "motorcycle", "camera", "grass", "brick", "gravel",
)  # fmt: skip
MPL_PHOTOS = ("grace_hopper",)  # matplotlib's sample portrait
EXTRA_SCENE_SEED = 100  # extra scenes use seeds 100+ (the grid 0-17; pretraining 10000+)


def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    return getattr(data, name)()


def _mpl_photo(name: str) -> np.ndarray:
    import matplotlib.cbook
    from PIL import Image

    return np.asarray(Image.open(matplotlib.cbook.get_sample_data(f"{name}.jpg")).convert("RGB"))


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = (255 * (arr.astype(np.float64) / max(float(arr.max()), 1e-8))).astype(np.uint8)
    return arr


def extra_scenes(n: int, size: int) -> list[Scene]:
    """``n`` scenes beyond the grid: every direction incl. light from below, random exposure/ambient."""
    rng = np.random.default_rng(EXTRA_SCENE_SEED)
    return [
        Scene(
            horizontal=str(rng.choice(["left", "front", "right"])),
            vertical=("below", "above", "level")[i % 3],
            color_temperature=str(rng.choice(["warm", "neutral", "cool"])),
            exposure=round(float(rng.uniform(0.6, 1.2)), 2),
            ambient=round(float(rng.uniform(0.1, 0.45)), 2),
            size=size,
            seed=EXTRA_SCENE_SEED + i,
        )
        for i in range(n)
    ]


def demo_files(
    scene_size: int = 256,
    photos: bool = True,
    scenes: bool = True,
    extra_scenes_count: int = 12,
    broken: bool = True,
) -> dict[str, Callable[[Path], None]]:
    """The demo's files: relative path -> function that writes it (nothing is written here)."""
    files: dict[str, Callable[[Path], None]] = {}
    if photos:
        for name in SKIMAGE_PHOTOS:
            files[f"photos/{name}.jpg"] = lambda p, n=name: save_image(
                p, _as_rgb(_skimage_photo(n)), quality=92
            )
        for name in MPL_PHOTOS:
            files[f"photos/{name}.jpg"] = lambda p, n=name: save_image(p, _mpl_photo(n), quality=92)
    if scenes:
        grid = scene_grid(scene_size)
        for i, scene in enumerate(grid + extra_scenes(extra_scenes_count, scene_size)):
            rel = f"scenes/{i:02d}_{scene.horizontal}_{scene.vertical}_{scene.color_temperature}.png"
            files[rel] = lambda p, s=scene: save_image(p, render_scene(s)[0])
    if broken:
        files["broken/truncated.jpg"] = _write_truncated_jpeg
        files["broken/not_an_image.jpg"] = lambda p: p.write_text("this is a text file named .jpg\n")
    return files


def expected_files(**options) -> list[str]:
    """Relative paths of the demo images that :func:`materialize` writes with ``options`` (sorted)."""
    return sorted(demo_files(**options))


def materialize(root: str | os.PathLike, **options) -> list[Path]:
    """Write the demo images under ``root``; return the paths written or already present."""
    root = Path(root)
    written: list[Path] = []
    for rel, make in demo_files(**options).items():
        path = root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            make(path)
        written.append(path)
    log.info("demo data: %d files under %s", len(written), root)
    return written


def write_base_model(out_dir: str | os.PathLike, weights: str | os.PathLike | None = None) -> Path:
    """The demo's base model: the tiny pretrained SD1.5-layout InstructPix2Pix pipeline shipped in the
    package (:func:`relightflow.testing.demo_base.install_demo_base`), which training fine-tunes."""
    from relightflow.testing.demo_base import WEIGHTS, install_demo_base

    return install_demo_base(out_dir, weights or WEIGHTS)


def _write_truncated_jpeg(path: Path) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(render_scene(size=128)[0]).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
