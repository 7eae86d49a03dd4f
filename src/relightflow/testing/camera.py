"""A camera-like image pipeline for exposure brackets: meter, expose, sensor noise, tone curve, 8-bit, JPEG.

Real brackets differ from a gamma-only ladder of a finished photo: the sensor clips at saturation, the
camera's tone curve rolls highlights off into a shoulder (a bright sky is compressed, not cut), and the
darker frames carry more shot and read noise relative to their signal. The model, in raw units where the
sensor saturates at 1:

* metering puts the centre-weighted mean scene luminance at ``METERED_RAW`` (about 3.2 stops of headroom);
* noise: ``raw + N(0, sqrt(raw / FULL_WELL + READ_NOISE**2))`` per channel;
* tone curve: ``x = GAIN * raw`` (metered grey at linear 0.18), linear up to ``KNEE``, then a quadratic
  shoulder with slope 1 at the knee and 0 at white (``x = GAIN``), then sRGB encoding;
* 8-bit quantisation and, optionally, JPEG.

``photo_to_raw`` inverts the curve, so a finished photo becomes a raw frame whose 0 EV development gives
the photo back; pixels the photo clipped are extended above saturation (their true radiance is unknown
but higher), so a darker frame recovers them as a real one would.
"""

from __future__ import annotations

import cv2
import numpy as np

KNEE = 0.4  # linear output where the highlight shoulder starts
WHITE = 2.0 * (1.0 - KNEE) + KNEE  # x where the quadratic shoulder reaches 1 with zero slope (1.6)
GAIN = WHITE  # raw saturation (1.0) develops to white
METERED_RAW = 0.18 / GAIN  # raw level of a metered mid grey (0.1125: 3.15 stops below saturation)
FULL_WELL = 3000.0  # shot noise: variance = raw / FULL_WELL
READ_NOISE = 0.0015  # read noise sigma, raw units
CLIPPED_RADIANCE = 2.0  # radiance (x saturation) given to pixels a photo had clipped
LUMA = np.array([0.2126, 0.7152, 0.0722])


def _srgb_encode(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1 / 2.4) - 0.055)


def _srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def tone_curve(raw: np.ndarray) -> np.ndarray:
    """Camera tone curve: raw in [0, 1] (clipped) -> display value in [0, 1] (sRGB-encoded)."""
    x = GAIN * np.clip(raw, 0.0, 1.0)
    shoulder = 1.0 - (WHITE - x) ** 2 / (4.0 * (1.0 - KNEE))
    return _srgb_encode(np.where(x <= KNEE, x, shoulder))


def inverse_tone_curve(display: np.ndarray) -> np.ndarray:
    """Raw value in [0, 1] whose development is ``display`` (in [0, 1])."""
    y = _srgb_decode(np.clip(display, 0.0, 1.0))
    x = np.where(y <= KNEE, y, WHITE - np.sqrt(np.maximum(4.0 * (1.0 - KNEE) * (1.0 - y), 0.0)))
    return x / GAIN


def metering_weights(shape: tuple[int, ...]) -> np.ndarray:
    """Centre-weighted metering: a Gaussian of sigma 0.35 of the longer side, summing to 1."""
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    d2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (0.35 * max(h, w)) ** 2
    weights = np.exp(-0.5 * d2)
    return weights / weights.sum()


def meter(radiance: np.ndarray) -> float:
    """Exposure factor that puts the centre-weighted mean luminance of linear ``radiance`` at ``METERED_RAW``."""
    lum = np.asarray(radiance, dtype=np.float64) @ LUMA
    mean = float((lum * metering_weights(lum.shape)).sum())
    return METERED_RAW / max(mean, 1e-6)


def develop(
    raw: np.ndarray,
    rng: np.random.Generator | None = None,
    noise: bool = True,
    jpeg_quality: int | None = None,
) -> np.ndarray:
    """A raw frame (linear, saturation 1; values above clip) -> ``HxWx3 uint8`` as the camera would save it."""
    raw = np.clip(np.asarray(raw, dtype=np.float64), 0.0, None)
    if noise:
        rng = rng or np.random.default_rng(0)
        raw = raw + rng.standard_normal(raw.shape) * np.sqrt(raw / FULL_WELL + READ_NOISE**2)
    image = np.clip(tone_curve(np.clip(raw, 0.0, 1.0)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if jpeg_quality is None:
        return image
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def photo_to_raw(image: np.ndarray) -> np.ndarray:
    """Invert the tone curve of a finished ``uint8`` photo: its raw frame (clipped pixels extended)."""
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    raw = inverse_tone_curve(rgb)
    clipped = (rgb.max(axis=2) >= 250 / 255).astype(np.float32)
    if clipped.any():
        soft = cv2.GaussianBlur(clipped, (0, 0), 1.5)[..., None]
        raw = raw * (1.0 + (CLIPPED_RADIANCE - 1.0) * soft)
    return raw


def bracket(
    raw: np.ndarray,
    stops: tuple[float, ...] = (-1.5, 0.0, 1.5),
    seed: int = 0,
    jpeg_quality: int | None = 92,
) -> list[np.ndarray]:
    """Develop ``raw`` (metered: 0 EV) at each exposure offset in ``stops``; each frame has its own noise."""
    rng = np.random.default_rng(seed)
    return [develop(raw * 2.0**s, rng, jpeg_quality=jpeg_quality) for s in stops]
