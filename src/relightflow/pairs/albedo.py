"""Albedo (flat-lit appearance) estimates: Retinex (gradient-domain or multi-scale surround), or Marigold.

``retinex_albedo`` divides each pixel by an estimate of the shading, in linear light and on luminance only
(one scalar per pixel, so colours keep their chromaticity). Two shading estimates:

* ``gradient`` (default; Color Retinex, after Land & McCann, Horn, and Grosse et al. 2009): shading is
  smooth and does not change chromaticity, reflectance changes do. The log-luminance gradients of a
  downscaled copy (``GRADIENT_SIDE``) are kept as shading gradients except across albedo edges: where the
  rgb chromaticity jumps by more than ``chroma_edge`` (L1) or the log-luminance by more than
  ``LUMA_EDGE``. The kept field is integrated (least squares, Neumann boundary, a DCT Poisson solve) into
  log-shading, which is upsampled: cheap, and no halos around albedo edges.
* ``surround`` (multi-scale Retinex): the geometric mean over ``scales`` of Gaussian averages of the
  luminance (sigmas in px at 1024, scaled with the image).

With a mask, the subject's shading is estimated from subject pixels only (no gradient crosses the mask's
edge; the surround is a normalised convolution), so a bright background does not bleed into the face.
Measured on rendered objects and portraits with known reflectance (``benchmarks/eval_signals.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.fft

from relightflow.devices import pick_device, torch_dtype
from relightflow.pairs.color import linear_to_srgb, linear_to_srgb8, luminance, srgb_to_linear
from relightflow.pairs.filters import blend, downscale, masked_blur, resize_field, soft_mask

log = logging.getLogger(__name__)

METHODS = ("gradient", "surround")  # pairs.retinex.method
ALBEDOS = ("retinex", "marigold", "none")  # pairs.albedo
DEFAULT_SCALES = (15.0, 80.0, 250.0)
GRADIENT_SIDE = 512  # the gradient method integrates shading at this size (longer side, px)
CHROMA_EDGE = 0.15  # rgb chromaticity step (L1) between neighbouring pixels that marks an albedo edge
LUMA_EDGE = 1.0  # log-luminance step that marks an albedo edge whatever its chromaticity
REFERENCE_SIDE = 1024  # Retinex sigmas are given in pixels at this size and scale with the image
EPS = 1e-4


def illumination(lum: np.ndarray, weight: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """Geometric mean over scales of the weighted Gaussian average of luminance (MSR's surround)."""
    log_s = np.zeros_like(lum)
    for sigma in sigmas:
        log_s += np.log(np.maximum(masked_blur(lum, weight, sigma), EPS))
    return np.exp(log_s / len(sigmas))


def _poisson(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Least-squares integral of a gradient field (forward differences, Neumann boundary) by a DCT solve."""
    h, w = gx.shape
    div = np.zeros((h, w))
    div[:, :-1] += gx[:, :-1]
    div[:, 1:] -= gx[:, :-1]
    div[:-1, :] += gy[:-1, :]
    div[1:, :] -= gy[:-1, :]
    yy, xx = np.mgrid[0:h, 0:w]
    eigen = (2.0 * np.cos(np.pi * xx / w) - 2.0) + (2.0 * np.cos(np.pi * yy / h) - 2.0)
    eigen[0, 0] = 1.0
    coef = scipy.fft.dctn(div, norm="ortho") / eigen
    coef[0, 0] = 0.0
    return scipy.fft.idctn(coef, norm="ortho")


def _forward_diff(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dx, dy = np.zeros_like(x), np.zeros_like(x)
    dx[:, :-1], dy[:-1] = x[:, 1:] - x[:, :-1], x[1:] - x[:-1]
    return dx, dy


def gradient_shading(
    lin: np.ndarray, weight: np.ndarray, chroma_edge: float = CHROMA_EDGE, side: int = GRADIENT_SIDE
) -> np.ndarray:
    """Color-Retinex shading (HxW, positive, arbitrary scale per connected region of ``weight > 0.5``)."""
    small = downscale(lin, side)
    inside = downscale(weight, side) > 0.5
    lum = luminance(small).astype(np.float64) + EPS
    log_lum = np.log(lum)
    chroma = small / (small.sum(axis=-1, keepdims=True) + EPS)
    gx, gy = _forward_diff(log_lum)
    cx, cy = (np.abs(d).sum(axis=-1) for d in _forward_diff(chroma))
    ix, iy = (d == 0 for d in _forward_diff(inside.astype(np.int8)))  # both pixels on the same side
    gx = np.where((cx > chroma_edge) | (np.abs(gx) > LUMA_EDGE) | ~ix, 0.0, gx)
    gy = np.where((cy > chroma_edge) | (np.abs(gy) > LUMA_EDGE) | ~iy, 0.0, gy)
    log_shade = _poisson(gx, gy).astype(np.float32)
    return np.exp(resize_field(log_shade, lin.shape))


def _normalise(shade: np.ndarray, region: np.ndarray) -> float:
    """Geometric mean of ``shade`` over ``region`` (1 when empty)."""
    return float(np.exp(np.log(shade[region]).mean())) if region.any() else 1.0


def retinex_gain(
    lin: np.ndarray,
    mask: np.ndarray | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    blend: float = 0.0,
    foreground_only: bool = True,
    method: str = "gradient",
    chroma_edge: float = CHROMA_EDGE,
) -> np.ndarray:
    """Per-pixel scalar g such that ``lin * g`` is the Retinex albedo (HxW float32).

    g = (1 - blend) * k / S + blend, with S the shading (``method``) and k the subject's geometric mean
    of S (keeps the exposure); scaled down so the 99.5th percentile of the result stays <= 1 (no clipped
    highlights); 1 outside the mask when ``foreground_only``. One scalar per pixel: chromaticity is
    preserved exactly.
    """
    if method not in METHODS:
        raise ValueError(f"unknown Retinex method {method!r} (expected one of {METHODS})")
    m = soft_mask(mask, lin.shape)
    fg = m > 0.5
    if not fg.any():
        return np.ones(m.shape, np.float32)
    if method == "gradient":
        shade = gradient_shading(lin, m, chroma_edge)
        if mask is not None and not foreground_only:  # each side of the mask was integrated on its own
            shade = np.where(fg, shade, shade * _normalise(shade, fg) / _normalise(shade, ~fg))
    else:
        lum = luminance(lin) + EPS
        sigmas = [s * max(lin.shape[:2]) / REFERENCE_SIDE for s in scales]
        shade = illumination(lum, m, sigmas)
        if mask is not None and not foreground_only:
            shade = m * shade + (1 - m) * illumination(lum, 1 - m, sigmas)
    gain = (1 - blend) * _normalise(shade, fg) / shade + blend
    sub = (slice(None, None, 4), slice(None, None, 4))
    peaks = lin[sub].max(axis=2)[fg[sub]] * gain[sub][fg[sub]]
    peak = float(np.quantile(peaks, 0.995)) if peaks.size else 1.0
    if peak > 1.0:
        gain /= peak
    if mask is not None and foreground_only:
        gain = m * gain + (1 - m)
    return gain.astype(np.float32)


def retinex_albedo8(image: np.ndarray, mask: np.ndarray | None = None, **kwargs) -> np.ndarray:
    """:func:`retinex_albedo` as ``uint8`` sRGB (what the pipeline saves and degrades)."""
    lin = srgb_to_linear(image)
    return linear_to_srgb8(lin * retinex_gain(lin, mask, **kwargs)[..., None])


def retinex_albedo(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    blend: float = 0.0,
    foreground_only: bool = True,
    method: str = "gradient",
    chroma_edge: float = CHROMA_EDGE,
) -> np.ndarray:
    """Retinex albedo of ``image`` (HxWx3 uint8): float32 sRGB in [0, 1], same shape.

    Works in linear light on luminance: each pixel is divided by the shading (``method``: ``gradient``
    Color Retinex, or ``surround`` multi-scale Retinex over ``scales``, Gaussian sigmas in px at 1024);
    ``blend`` of the original is mixed back (the pipeline uses 0.2 against over-flattening);
    ``foreground_only`` keeps the background as it was.
    """
    albedo = retinex_albedo8(
        image, mask, scales=scales, blend=blend, foreground_only=foreground_only, method=method,
        chroma_edge=chroma_edge,
    )  # fmt: skip
    return albedo.astype(np.float32) / 255.0


class MarigoldAlbedo:
    """Albedo from diffusers' ``MarigoldIntrinsicsPipeline`` (``prs-eth/marigold-iid-appearance-v1-1`` or
    ``-lighting-v1-1``; a local folder or hub id). The ``albedo`` target is taken from the pipeline's
    ``target_properties``; sRGB-space targets are returned as is, linear ones are encoded to sRGB."""

    def __init__(
        self,
        model: str,
        num_inference_steps: int | None = None,
        processing_resolution: int | None = None,
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        from diffusers import MarigoldIntrinsicsPipeline

        self.device = pick_device(device)
        half = {"torch_dtype": torch_dtype("fp16", self.device)} if self.device.startswith("cuda") else {}
        self.pipe = MarigoldIntrinsicsPipeline.from_pretrained(model, **half).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps, self.resolution, self.seed = num_inference_steps, processing_resolution, seed
        props = self.pipe.target_properties or {}
        names = list(props.get("target_names") or ["albedo"])
        if "albedo" not in names:
            raise ValueError(f"{model}: no 'albedo' among the pipeline's targets {names}")
        self.index, self.n_targets = names.index("albedo"), len(names)
        self.linear = (props.get("albedo") or {}).get("prediction_space", "srgb") != "srgb"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import torch

        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        out = self.pipe(
            image.astype(np.float32) / 255.0,
            num_inference_steps=self.steps,
            processing_resolution=self.resolution,
            generator=generator,
            output_type="np",
        )
        albedo = np.asarray(out.prediction[self.index], dtype=np.float32)
        return linear_to_srgb(albedo) if self.linear else np.clip(albedo, 0.0, 1.0)


class AlbedoEstimator:
    """The configured albedo method (``retinex`` | ``marigold`` | ``none``) with blend-back and
    foreground-only applied the same way for every method."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.method = cfg["albedo"]
        self.retinex = cfg["retinex"]
        self.blend = float(self.retinex["blend"])
        self.foreground_only = bool(self.retinex["foreground_only"])
        self.marigold = None
        if self.method == "marigold":
            mcfg = cfg["marigold"]
            self.marigold = MarigoldAlbedo(mcfg["model"], mcfg["num_inference_steps"], mcfg["processing_resolution"])
        elif self.method not in ALBEDOS:
            raise ValueError(f"unknown pairs.albedo {self.method!r} (one of {ALBEDOS})")

    def __call__(self, image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """``uint8`` sRGB albedo, same shape as ``image``."""
        if self.method == "none":
            return image
        if self.method == "retinex":
            r = self.retinex
            return retinex_albedo8(
                image, mask, scales=r["scales"], blend=self.blend, foreground_only=self.foreground_only,
                method=r["method"], chroma_edge=float(r["chroma_edge"]),
            )  # fmt: skip
        return self._blend(image, self.marigold(image), mask)

    def _blend(self, image: np.ndarray, albedo: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Blend back ``blend`` of the original in linear light; keep the background if foreground-only."""
        lin = srgb_to_linear(image)
        out = linear_to_srgb8((1 - self.blend) * srgb_to_linear(albedo) + self.blend * lin)
        if mask is not None and self.foreground_only:
            out = blend(out, image, soft_mask(mask, image.shape))
        return out

    def describe(self) -> dict[str, Any]:
        """What shaped the albedo (recorded with each row)."""
        d: dict[str, Any] = {
            "method": self.method,
            "blend": self.blend,
            "foreground_only": self.foreground_only,
        }
        if self.method == "retinex":
            d["retinex_method"] = self.retinex["method"]
            if d["retinex_method"] == "surround":
                d["scales"] = list(self.retinex["scales"])
            else:
                d["chroma_edge"] = float(self.retinex["chroma_edge"])
        return d
