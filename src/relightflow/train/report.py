"""Validation grids (input | prediction | target), the loss curve and the run summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from relightflow.images import save_image
from relightflow.manifest import atomic_path, write_json
from relightflow.train.config import TrainConfig, TrainPaths
from relightflow.train.data import crop_box, resize_shorter, validation_rows

__all__ = ["validation_rows", "validation_grid", "save_grid", "plot_loss", "plot_curve", "write_summary"]


def square(image: Image.Image, resolution: int) -> Image.Image:
    """Shorter side to ``resolution``, centre crop to a square."""
    image = resize_shorter(image.convert("RGB"), resolution)
    top, left = crop_box(image.size, resolution, None)
    return image.crop((left, top, left + resolution, top + resolution))


def validation_grid(pipe, rows: list[dict[str, Any]], cfg: TrainConfig, device) -> tuple[np.ndarray, float]:
    """Run ``pipe`` on each row; return the grid (one row per sample) and the mean MSE to the targets."""
    import torch

    pipe.to(device)
    tiles, errors = [], []
    for i, row in enumerate(rows):
        source, target = (
            square(row["input_image"], cfg.resolution),
            square(row["edited_image"], cfg.resolution),
        )
        pred = pipe(
            row["edit_prompt"], image=source, num_inference_steps=cfg.validation_inference_steps,
            guidance_scale=cfg.guidance_scale, image_guidance_scale=cfg.image_guidance_scale,
            generator=torch.Generator("cpu").manual_seed(cfg.seed + i), output_type="np",
        ).images[0]  # fmt: skip
        pred = np.clip(np.nan_to_num(pred) * 255 + 0.5, 0, 255).astype(np.uint8)
        target_arr = np.asarray(target)
        errors.append(float(np.mean((pred / 255.0 - target_arr / 255.0) ** 2)))
        tiles.append(np.concatenate([np.asarray(source), pred, target_arr], axis=1))
    return np.concatenate(tiles, axis=0), float(np.mean(errors))


def save_grid(path: Path, grid: np.ndarray) -> Path:
    save_image(path, grid)
    return path


def read_losses(loss_log: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) from ``loss.jsonl`` (empty arrays when there is none)."""
    if not loss_log.exists():
        return np.zeros(0), np.zeros(0)
    records = [json.loads(line) for line in loss_log.read_text().splitlines() if line.strip()]
    return np.array([r["step"] for r in records]), np.array([r["loss"] for r in records])


def plot_loss(loss_log: Path, out: Path) -> Path:
    """Loss per step (from ``loss.jsonl``) and its moving average, as a PNG."""
    steps, losses = read_losses(loss_log)
    return plot_curve(steps, losses, out, "training loss")


def plot_curve(steps: np.ndarray, losses: np.ndarray, out: Path, title: str) -> Path:
    """A loss curve PNG (log scale) with a moving average once there are enough points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = np.asarray(steps), np.asarray(losses)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if len(steps):
        ax.plot(steps, losses, lw=0.8, alpha=0.6, marker="." if len(steps) < 50 else None, label="loss")
        window = min(100, len(losses) // 10)
        if window > 1:
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window} steps")
        ax.legend()
    ax.set(xlabel="step", ylabel="MSE", title=title, yscale="log" if len(steps) else "linear")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def write_summary(path: Path, cfg: TrainConfig, paths: TrainPaths, step: int) -> None:
    """Final step, first/last losses and the settings of the run."""
    steps, losses = read_losses(paths.loss_log)
    k = max(1, len(losses) // 10)
    write_json(
        path,
        {
            "steps": step,
            "loss_first": float(losses[:k].mean()) if len(losses) else None,
            "loss_last": float(losses[-k:].mean()) if len(losses) else None,
            "config": cfg.model_dump(),
            "paths": paths.model_dump(),
        },
    )
