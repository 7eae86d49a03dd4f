"""Image identity, seeding, safe decoding and saving.

All per-image functions of the package take and return numpy ``HxWx3 uint8`` RGB arrays (masks are
``HxW bool``). Decoding applies the EXIF orientation, converts every mode (palette, CMYK, 16-bit,
grayscale, RGBA) to 8-bit RGB, and refuses images above a pixel budget (decompression bombs).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from relightflow.manifest import atomic_path

DEFAULT_MAX_PIXELS = 50_000_000


class ImageError(Exception):
    """An image that cannot be used; the message is the recorded reject reason."""


def path_id(relpath: str) -> str:
    """Stable image id from a path relative to the dataset root (POSIX separators)."""
    return hashlib.sha1(relpath.replace(os.sep, "/").encode("utf-8", "surrogateescape")).hexdigest()[:16]


def content_id(path: str | os.PathLike) -> str:
    """Stable image id from the file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    """Full SHA-256 of a file (cache keys for expensive per-image work)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def image_seed(seed: int, image_id: str, *extra: object) -> int:
    """Per-image seed from (global seed, image_id, extras such as the variant index or a stage name)."""
    key = "|".join([str(seed), image_id, *map(str, extra)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def image_rng(seed: int, image_id: str, *extra: object) -> np.random.Generator:
    """A numpy Generator seeded by :func:`image_seed`."""
    return np.random.default_rng(image_seed(seed, image_id, *extra))


def to_rgb8(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode to ``HxWx3 uint8`` RGB (alpha composited on white, 16-bit rescaled)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        arr = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def open_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image lazily after a size check; raise :class:`ImageError` with a reason otherwise."""
    try:
        img = Image.open(path)
    except FileNotFoundError as e:
        raise ImageError("missing file") from e
    except PermissionError as e:
        raise ImageError("unreadable: permission denied") from e
    except Image.UnidentifiedImageError as e:
        raise ImageError("not an image (unidentified format)") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"too many pixels: {e}") from e
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from e
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageError(f"too many pixels: {w}x{h} > {max_pixels}")
    return img


def load_rgb(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
) -> np.ndarray:
    """Decode an image to ``HxWx3 uint8`` RGB with EXIF orientation applied.

    With ``max_side`` a JPEG is decoded at reduced scale in the DCT domain (PIL ``draft``), then
    resized so its longer side is at most ``max_side``; far cheaper than a full decode.
    """
    img = open_image(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if max_side and img.format == "JPEG":
                img.draft("RGB", (max_side, max_side))
            img.load()
            img = ImageOps.exif_transpose(img)
            if max_side and max(img.size) > max_side:
                img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            return to_rgb8(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"corrupt image: {e}") from e
    finally:
        img.close()


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Load a mask PNG as ``HxW bool`` (any non-zero pixel is foreground)."""
    with Image.open(path) as m:
        return np.asarray(m.convert("L")) > 127


def save_image(path: str | os.PathLike, image: np.ndarray, quality: int = 95) -> None:
    """Atomically save an RGB uint8 array or a bool/uint8 mask; format from the suffix."""
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        arr = np.clip(np.asarray(arr, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    pil = Image.fromarray(arr)
    suffix = Path(path).suffix.lower()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(suffix, "PNG")
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {"compress_level": 1}
    with atomic_path(path) as tmp:
        pil.save(tmp, format=fmt, **kwargs)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 array (for datasets and HTTP payloads)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def resize_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is at most ``max_side`` (area interpolation); no upscaling."""
    import cv2

    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
