"""sRGB <-> linear-light conversions through lookup tables (fast on megapixel images)."""

from __future__ import annotations

import numpy as np

REC709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def _srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _srgb_encode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1 / 2.4) - 0.055)


_DECODE8 = _srgb_decode(np.arange(256) / 255.0).astype(np.float32)
# index i covers linear values [i, i + 1) / 65535: the table holds the encoding of the bin centre
_ENCODE16 = np.clip(
    _srgb_encode(np.minimum(np.arange(65536) + 0.5, 65535) / 65535.0) * 255.0 + 0.5, 0, 255
).astype(np.uint8)


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """``uint8`` sRGB (or float in [0, 1]) to float32 linear light."""
    if image.dtype == np.uint8:
        return _DECODE8[image]
    return _srgb_decode(np.clip(image, 0.0, 1.0)).astype(np.float32)


def linear_to_srgb8(linear: np.ndarray) -> np.ndarray:
    """Float linear light (clipped to [0, 1]) to ``uint8`` sRGB, via a 16-bit table (no ``pow``)."""
    scaled = np.multiply(linear, 65535.0, dtype=np.float32)
    np.clip(scaled, 0.0, 65535.0, out=scaled)
    return np.take(_ENCODE16, scaled.astype(np.uint16))


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Float linear light to float sRGB in [0, 1] (8-bit precision)."""
    return linear_to_srgb8(linear).astype(np.float32) / 255.0


def luminance(linear: np.ndarray) -> np.ndarray:
    """Rec. 709 relative luminance of a linear ``HxWx3`` image."""
    return linear @ REC709


def chromaticity(linear: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Mean ``(r, g, b) / (r + g + b)`` of the (masked) pixels."""
    px = linear[mask] if mask is not None else linear.reshape(-1, 3)
    total = px.sum(axis=0)
    return total / max(float(total.sum()), 1e-8)
