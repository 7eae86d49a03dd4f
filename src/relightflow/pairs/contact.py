"""Contact sheets for visual QA: one row per image (original | mask | albedo | degraded variants)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from relightflow.images import save_image


def thumbnail(image: np.ndarray, tile: int) -> np.ndarray:
    """Fit ``image`` (RGB uint8, or a HxW mask) into a ``tile`` x ``tile`` RGB square on dark grey."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    h, w = img.shape[:2]
    scale = tile / max(h, w)
    small = cv2.resize(
        img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )
    out = np.full((tile, tile, 3), 32, np.uint8)
    y, x = (tile - small.shape[0]) // 2, (tile - small.shape[1]) // 2
    out[y : y + small.shape[0], x : x + small.shape[1]] = small
    return out


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(tile, text[:28], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def contact_sheet(
    rows: Sequence[Sequence[tuple[str, np.ndarray]]], tile: int = 192, gap: int = 4
) -> np.ndarray:
    """Grid of labelled thumbnails; ``rows`` = [[(label, image), ...], ...]. Empty input gives a 1-tile sheet."""
    if not rows:
        return _label(np.full((tile, tile, 3), 32, np.uint8), "no pairs")
    cols = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (tile + gap) + gap, cols * (tile + gap) + gap, 3), 16, np.uint8)
    for i, row in enumerate(rows):
        for j, (text, image) in enumerate(row):
            y, x = gap + i * (tile + gap), gap + j * (tile + gap)
            sheet[y : y + tile, x : x + tile] = _label(thumbnail(image, tile), text)
    return sheet


def write_contact_sheet(
    path: str | os.PathLike, rows: Sequence[Sequence[tuple[str, np.ndarray]]], tile: int = 192
) -> None:
    """Render and save a contact sheet atomically (PNG)."""
    save_image(path, contact_sheet(rows, tile))
