"""Demo images, made with no network: real photos that scikit-image ships, plus rendered scenes.

``materialize(root)`` writes them under ``root`` (idempotent: existing files are kept). The real photos
come from ``skimage.data`` (bundled in the wheel); the rendered scenes have a known light direction and
colour (``relightflow.testing.render_scene``), which later stages can be checked against. Two broken files
are added on purpose so the demo shows the rejects table at work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from relightflow.images import save_image
from relightflow.testing import render_scene, scene_grid

log = logging.getLogger(__name__)

# Colour photos bundled with scikit-image (all load offline); grayscale ones exercise mode handling.
SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
    "motorcycle", "camera", "grass", "brick", "gravel",
)  # fmt: skip


def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    return getattr(data, name)()


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = (255 * (arr.astype(np.float64) / max(float(arr.max()), 1e-8))).astype(np.uint8)
    return arr


def demo_files(
    scene_size: int = 256, photos: bool = True, scenes: bool = True, broken: bool = True
) -> dict[str, Callable[[Path], None]]:
    """The demo's files: relative path -> function that writes it (nothing is written here)."""
    files: dict[str, Callable[[Path], None]] = {}
    if photos:
        for name in SKIMAGE_PHOTOS:
            files[f"photos/{name}.jpg"] = lambda p, n=name: save_image(p, _as_rgb(_skimage_photo(n)), quality=92)
    if scenes:
        for i, scene in enumerate(scene_grid(scene_size)):
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


def write_base_model(out_dir: str | os.PathLike) -> Path:
    """The demo's base model: a tiny SD1.5-layout text-to-image pipeline, which training widens."""
    from relightflow.testing.tiny_sd import save_tiny_pipeline

    return save_tiny_pipeline(out_dir, kind="sd15", resolution=64, instruct=False)


def _write_truncated_jpeg(path: Path) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(render_scene(size=128)[0]).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
