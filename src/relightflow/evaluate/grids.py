"""Contact sheets of evaluation results: one row per example, one column per image (input | prediction(s)
| target), the instruction written under the row and the column names on top."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from relightflow.images import save_image

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
PAD = 4


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def thumbnail(image: np.ndarray, cell: int) -> Image.Image:
    """Scale the image to fit a ``cell`` x ``cell`` square (aspect kept, centred on white)."""
    pil = Image.fromarray(image)
    scale = cell / max(pil.size)
    size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
    pil = pil.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (cell, cell), BACKGROUND)
    canvas.paste(pil, ((cell - pil.width) // 2, (cell - pil.height) // 2))
    return canvas


def comparison_grid(rows: Sequence[Sequence[np.ndarray]], captions: Sequence[str], columns: Sequence[str],
                    cell: int = 160, font_size: int = 12) -> np.ndarray:  # fmt: skip
    """An RGB uint8 sheet: header with ``columns``, then per row its images and its caption underneath."""
    if not rows:
        raise ValueError("no rows to draw")
    font = _font(font_size)
    line_h = font_size + 3
    width = len(columns) * (cell + PAD) + PAD
    chars = max(10, int(width / (0.55 * font_size)))
    wrapped = [textwrap.wrap(c, chars)[:3] or [""] for c in captions]
    heights = [cell + PAD + len(w) * line_h + 2 * PAD for w in wrapped]
    sheet = Image.new("RGB", (width, line_h + 2 * PAD + sum(heights)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for j, name in enumerate(columns):
        draw.text((PAD + j * (cell + PAD), PAD), name, fill=INK, font=font)
    y = line_h + 2 * PAD
    for images, lines, h in zip(rows, wrapped, heights, strict=True):
        for j, image in enumerate(images):
            sheet.paste(thumbnail(image, cell), (PAD + j * (cell + PAD), y))
        for k, line in enumerate(lines):
            draw.text((PAD, y + cell + PAD + k * line_h), line, fill=INK, font=font)
        y += h
    return np.asarray(sheet)


def save_grid(path: str | os.PathLike, rows: Sequence[Sequence[np.ndarray]], captions: Sequence[str],
              columns: Sequence[str], cell: int = 160) -> None:  # fmt: skip
    """Write :func:`comparison_grid` as PNG (atomically); an empty evaluation gets a one-line notice."""
    if rows:
        save_image(path, comparison_grid(rows, captions, columns, cell))
        return
    blank = Image.new("RGB", (400, 40), BACKGROUND)
    ImageDraw.Draw(blank).text((PAD, PAD), "no test images were evaluated", fill=INK, font=_font(14))
    save_image(path, np.asarray(blank))
