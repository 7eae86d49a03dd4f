"""Image identity, seeding, the one way to open an image, and saving.

All per-image functions of the package take and return numpy ``HxWx3 uint8`` RGB arrays (masks are
``HxW bool``). Every stage opens untrusted images through :func:`open_image` (and the decoders built on
it, :func:`load_rgb`, :func:`load_reduced`): the path must be a regular file (a FIFO or device is
rejected without being opened), Pillow may only use the allowed formats (``images.formats``; never
PostScript/EPS/PDF, whose plugins run Ghostscript), and images above ``images.max_pixels`` are refused
before decoding. Decoding applies the EXIF orientation and converts every mode (palette, CMYK, 16-bit,
grayscale, RGBA) to 8-bit RGB. Whatever the *file* causes becomes :class:`ImageError` (a reject);
environment failures (memory, I/O errors of the disk) pass through (see :mod:`relightflow.errors`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from relightflow.errors import BadInput, describe, is_environment_failure
from relightflow.manifest import atomic_path

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
NEVER_FORMATS = frozenset({"EPS", "PDF", "PS"})  # Ghostscript-backed: untrusted input would run code


class ImageError(BadInput):
    """An image that cannot be used; the message is the recorded reject reason."""


@dataclass(frozen=True)
class ImagePolicy:
    """What :func:`open_image` accepts: Pillow format names and a pixel budget."""

    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        formats = tuple(f.upper() for f in self.formats)
        banned = NEVER_FORMATS.intersection(formats)
        if banned:
            raise ValueError(f"images.formats may not allow {sorted(banned)} (Ghostscript runs on them)")
        Image.init()
        unknown = [f for f in formats if f not in Image.OPEN]
        if unknown:
            raise ValueError(f"unknown image formats {unknown}; Pillow opens {sorted(Image.OPEN)}")
        object.__setattr__(self, "formats", formats)


_POLICY = ImagePolicy()
Image.MAX_IMAGE_PIXELS = _POLICY.max_pixels


def configure(formats: Sequence[str] | None = None, max_pixels: int | None = None) -> ImagePolicy:
    """Set the process-wide :class:`ImagePolicy` (the ``images`` config section); return it."""
    global _POLICY
    _POLICY = ImagePolicy(tuple(formats or DEFAULT_FORMATS), int(max_pixels or DEFAULT_MAX_PIXELS))
    Image.MAX_IMAGE_PIXELS = _POLICY.max_pixels  # Pillow's own bomb check agrees with ours
    return _POLICY


def policy() -> ImagePolicy:
    """The current :class:`ImagePolicy`."""
    return _POLICY


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


def check_regular_file(path: str | os.PathLike) -> os.stat_result:
    """``os.stat`` of ``path``; :class:`ImageError` unless it is a regular file (FIFOs are never opened)."""
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise ImageError("missing file") from e
    except PermissionError as e:
        raise ImageError("unreadable: permission denied") from e
    except OSError as e:
        if is_environment_failure(e):
            raise
        raise ImageError("symlink loop" if e.errno == 40 else f"cannot stat: {e.strerror or e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("not a regular file")
    return st


def _bad_file(error: Exception, prefix: str) -> ImageError:
    """The reject of a file that made Pillow raise (environment failures are re-raised by the caller)."""
    if isinstance(error, Image.UnidentifiedImageError):
        return ImageError("not an image (format unknown or not allowed)")
    if isinstance(error, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageError(f"too many pixels: {error}")
    if isinstance(error, PermissionError):
        return ImageError("unreadable: permission denied")
    return ImageError(f"{prefix}: {describe(error)}")


Source = str | os.PathLike | bytes  # a file path, or encoded image bytes (a dataset cell)


def open_image(
    source: Source, max_pixels: int | None = None, formats: Sequence[str] | None = None
) -> Image.Image:
    """Open an image lazily (header only) under the :class:`ImagePolicy`; raise :class:`ImageError` with
    the reason when it is not a usable image. ``source`` is a path (which must be a regular file) or the
    encoded bytes; ``max_pixels``/``formats`` override the policy."""
    limit = int(max_pixels or _POLICY.max_pixels)
    if isinstance(source, bytes | bytearray):
        if not source:
            raise ImageError("missing image bytes")
        fp = io.BytesIO(source)
    else:
        check_regular_file(source)
        fp = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=list(formats or _POLICY.formats))
    except Exception as e:  # any plugin error (ValueError, SyntaxError, struct.error ...) is the file's fault
        if is_environment_failure(e):
            raise
        raise _bad_file(e, "unreadable") from e
    w, h = img.size
    if w * h > limit or w <= 0 or h <= 0:
        img.close()
        raise ImageError(f"too many pixels: {w}x{h} > {limit}" if w * h > limit else f"empty size: {w}x{h}")
    return img


def _oriented(img: Image.Image) -> Image.Image:
    """The image turned upright by its EXIF orientation; malformed EXIF leaves it as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as e:
        if is_environment_failure(e):
            raise
        log.debug("ignoring malformed EXIF orientation: %s", describe(e))
        return img


def decode(source: Source, draft_side: int | None = None) -> Image.Image:
    """Decode an image upright; a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps
    both sides >= ``draft_side``. Raises :class:`ImageError` for anything the file causes."""
    img = open_image(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if draft_side and img.format == "JPEG":
                img.draft("RGB", (draft_side, draft_side))
            img.load()
        return _oriented(img)
    except Exception as e:
        img.close()
        if is_environment_failure(e):
            raise
        raise _bad_file(e, "corrupt image") from e


def _to_rgb8_checked(img: Image.Image) -> np.ndarray:
    try:
        return to_rgb8(img)
    except Exception as e:  # an exotic mode Pillow cannot convert
        if is_environment_failure(e):
            raise
        raise ImageError(f"unsupported image mode {img.mode}: {describe(e)}") from e


def load_rgb(source: Source, max_pixels: int | None = None, max_side: int | None = None) -> np.ndarray:
    """Decode an image to ``HxWx3 uint8`` RGB, upright; with ``max_side`` a JPEG is decoded at reduced
    scale in the DCT domain and the result shrunk so its longer side is at most ``max_side``."""
    if max_pixels is not None and max_pixels != _POLICY.max_pixels:
        open_image(source, max_pixels).close()  # a stricter budget than the policy's
    img = decode(source, max_side)
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return _to_rgb8_checked(img)


def load_reduced(path: str | os.PathLike, side: int) -> np.ndarray:
    """``HxWx3 uint8`` RGB whose shorter side is in ``[side, 2 * side)`` (or smaller when the image is).

    JPEG: DCT-domain scaling in the decoder. Other formats: a full decode, then an integer box reduction
    (``Image.reduce``, ~5x cheaper than an area resize), so later steps work on a small array.
    """
    img = decode(path, side)
    if img.mode != "RGB":
        img = Image.fromarray(_to_rgb8_checked(img))
    factor = min(img.size) // side
    if factor >= 2:
        img = img.reduce(factor)
    return np.asarray(img, dtype=np.uint8)


def load_mask(path: str | os.PathLike, soft: bool = False) -> np.ndarray:
    """A mask image as ``HxW bool`` (any pixel above 127), or with ``soft`` its grey levels (``uint8``)."""
    img = decode(path)
    try:
        grey = np.asarray(img.convert("L"))
    finally:
        img.close()
    return grey if soft else grey > 127


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
    return image if max(image.shape[:2]) <= max_side else resize_longer_side(image, max_side)


def resize_longer_side(image: np.ndarray, side: int | None) -> np.ndarray:
    """``image`` scaled so its longer side is ``side`` (area when shrinking, bicubic when enlarging; None or
    the same side: unchanged)."""
    import cv2

    h, w = image.shape[:2]
    if not side or max(h, w) == side:
        return image
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
