"""Image quality against the real target: PSNR, SSIM (scikit-image) and, when its weights are local, LPIPS.

All functions take ``HxWx3 uint8`` RGB arrays of the same shape. LPIPS needs the ``lpips`` package (which
ships its calibrated linear layers) and the torchvision backbone checkpoint in the torch hub cache; when
either is missing, :func:`load_lpips` returns the reason instead of downloading anything.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

log = logging.getLogger(__name__)

PSNR_CAP = 100.0  # PSNR of identical images (instead of +inf, so means stay finite)


def psnr(prediction: np.ndarray, target: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (8-bit range), capped at :data:`PSNR_CAP`."""
    if np.array_equal(prediction, target):
        return PSNR_CAP
    return float(min(peak_signal_noise_ratio(target, prediction, data_range=255), PSNR_CAP))


def ssim(prediction: np.ndarray, target: np.ndarray) -> float:
    """Mean structural similarity over the colour channels (7 px window, smaller for tiny images)."""
    side = min(target.shape[:2])
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(target, prediction, data_range=255, channel_axis=2, win_size=win))


def image_metrics(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM of one prediction against its target."""
    if prediction.shape != target.shape:
        raise ValueError(f"shape mismatch: prediction {prediction.shape} vs target {target.shape}")
    return {"psnr": psnr(prediction, target), "ssim": ssim(prediction, target)}


@dataclass
class Lpips:
    """LPIPS distance (lower = closer) with a loaded ``lpips.LPIPS`` network."""

    net: Any
    device: str = "cpu"

    def __call__(self, prediction: np.ndarray, target: np.ndarray) -> float:
        import torch

        def to_tensor(img: np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
            return (t / 127.5 - 1.0).to(self.device)

        with torch.no_grad():
            return float(self.net(to_tensor(prediction), to_tensor(target)).item())


def _backbone_checkpoint(net: str) -> Path:
    """Where torchvision looks for the ImageNet weights of the LPIPS backbone."""
    import torch
    from torchvision import models

    weights = {
        "alex": models.AlexNet_Weights,
        "vgg": models.VGG16_Weights,
        "squeeze": models.SqueezeNet1_1_Weights,
    }[net].IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_lpips(enabled: bool, net: str = "alex", device: str = "cpu") -> tuple[Lpips | None, str | None]:
    """``(scorer, None)`` when LPIPS can run from local files, else ``(None, reason)``; never downloads."""
    if not enabled:
        return None, "disabled in config (evaluate.lpips: false)"
    try:
        import lpips
    except ImportError:
        return None, "the lpips package is not installed"
    checkpoint = _backbone_checkpoint(net)
    if not checkpoint.is_file():
        return None, f"backbone weights not found locally: {checkpoint}"
    with warnings.catch_warnings():  # lpips still passes torchvision's deprecated ``pretrained=True``
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
    log.info("LPIPS (%s) loaded from %s", net, checkpoint)
    return Lpips(model, device), None
