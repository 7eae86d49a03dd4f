"""Relight files with a trained model: one image, a folder, or a manifest of (image, instruction) rows.

Loading, sizes, seeds and sampler settings are :mod:`relightflow.inference`'s (one rule for the CLI,
evaluation and validation grids); this module only finds the inputs and writes the outputs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from relightflow.images import load_rgb, save_image
from relightflow.inference import Relighter

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def list_images(path: str | os.PathLike) -> list[Path]:
    """An image file, or the images of a folder (recursive, sorted)."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such image or folder: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def relight_files(
    relighter: Relighter, jobs: Iterable[tuple[Path, str, Path]], progress: bool = True
) -> list[dict[str, Any]]:
    """Relight (input, prompt, output) jobs with a progress bar; a failed image is reported, not fatal."""
    from tqdm.auto import tqdm

    jobs = list(jobs)
    results = []
    for source, prompt, target in tqdm(jobs, desc="relight", unit="img", disable=not progress):
        try:
            save_image(target, relighter(load_rgb(source), prompt))
        except Exception as e:  # unreadable image, diverged model: keep going with the next image
            log.warning("skipped %s: %s", source, e)
            results.append({"input": str(source), "output": None, "prompt": prompt, "error": str(e)})
            continue
        results.append({"input": str(source), "output": str(target), "prompt": prompt, "error": None})
    return results


def output_path(source: Path, input_root: Path, out_dir: Path) -> Path:
    """``out_dir/<path relative to the input folder>.png``."""
    rel = source.relative_to(input_root) if input_root.is_dir() else Path(source.name)
    return (out_dir / rel).with_suffix(".png")


def relight(
    relighter: Relighter, input_path: str | os.PathLike, prompt: str, out_dir: str | os.PathLike
) -> list[dict[str, Any]]:
    """Relight an image or every image of a folder with one instruction; outputs mirror the input tree."""
    root, out = Path(input_path), Path(out_dir)
    return relight_files(relighter, [(p, prompt, output_path(p, root, out)) for p in list_images(root)])


def relight_manifest(
    relighter: Relighter,
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_column: Sequence[str] = ("input_path", "path"),
    prompt_column: Sequence[str] = ("instruction", "edit_prompt", "prompt"),
) -> list[dict[str, Any]]:
    """Relight the rows of a Parquet/CSV manifest (first present of ``image_column`` / ``prompt_column``)."""
    import pandas as pd

    path = Path(manifest)
    table = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    img_col = next((c for c in image_column if c in table.columns), None)
    txt_col = next((c for c in prompt_column if c in table.columns), None)
    if img_col is None or txt_col is None:
        raise ValueError(f"{path} needs one of {image_column} and one of {prompt_column}")
    out = Path(out_dir)
    keys = table["image_id"] if "image_id" in table.columns else table.index.astype(str)
    jobs = [
        (Path(src), str(text), out / f"{key}_{i}.png")
        for i, (src, text, key) in enumerate(zip(table[img_col], table[txt_col], keys, strict=True))
    ]
    results = relight_files(relighter, jobs)
    pd.DataFrame(results).to_csv(out / "relit.csv", index=False)
    return results
