"""Stream the triplets of an exported dataset split (Hugging Face Parquet files) in bounded batches.

An image column holds what ``datasets.Image`` writes (a struct ``{bytes, path}``) or raw encoded bytes.
A row that carries its caption's measurement provenance (``subject_mask``, ``measure_side``,
``measure_version``: :mod:`relightflow.dataset`) gets its mask decoded with it, so the instruction is
checked the way it was made. Each triplet gets a unique ``key`` (``image_id`` plus ``variant`` when there is one) that names its
prediction files and seeds its randomness.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relightflow.dataset import data_files
from relightflow.images import ImageError, load_mask, load_rgb
from relightflow.manifest import iter_batches

INPUT, PROMPT, TARGET, MASK = "input_image", "edit_prompt", "edited_image", "subject_mask"


def split_files(split_dir: str | os.PathLike) -> list[str]:
    """The ``data-*.parquet`` files of an exported split folder, in order."""
    files = data_files(split_dir)
    if not files:
        raise FileNotFoundError(f"no data-*.parquet files in {split_dir}")
    return files


def decode_image(value: Any) -> np.ndarray:
    """``HxWx3 uint8`` RGB from a ``datasets.Image`` cell (bytes or a path), through the one image opener;
    raise :class:`ImageError` with a reason."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if data is None and isinstance(value, dict) and value.get("path"):
        return load_rgb(value["path"])
    return load_rgb(bytes(data or b""))


def decode_mask(value: Any) -> np.ndarray | None:
    """``HxW bool`` subject mask of a ``datasets.Image`` cell; None for an empty cell."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if data is None and isinstance(value, dict) and value.get("path"):
        return load_mask(value["path"])
    return None if data is None else load_mask(bytes(data))


@dataclass
class Triplet:
    """One decoded test example (input, instruction, target, the caption's subject mask) with its
    provenance columns."""

    key: str
    input: np.ndarray
    instruction: str
    target: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None


def row_key(row: dict[str, Any], index: int) -> str:
    """``image_id`` (``_v<variant>`` appended when the row has a variant); the row index as fallback."""
    base = str(row.get("image_id") or f"row{index:07d}")
    variant = row.get("variant")
    return f"{base}_v{variant}" if variant is not None and variant == variant else base


def iter_rows(split_dir: str | os.PathLike, batch_size: int = 8, limit: int | None = None):
    """Yield lists of raw row dicts (at most ``batch_size`` each, ``limit`` in total), each with ``key``."""
    seen: set[str] = set()
    index = 0
    for path in split_files(split_dir):
        for frame in iter_batches(path, batch_size=batch_size):
            rows = frame.to_dict("records")
            if limit is not None:
                rows = rows[: max(0, limit - index)]
            for row in rows:
                key = row_key(row, index)
                row["key"] = key if key not in seen else f"{key}_{index}"
                seen.add(row["key"])
                index += 1
            if rows:
                yield rows
            if limit is not None and index >= limit:
                return


def to_triplet(row: dict[str, Any]) -> Triplet:
    """Decode one row; raise :class:`ImageError` (the reject reason) when it cannot be evaluated."""
    instruction = row.get(PROMPT)
    if not isinstance(instruction, str) or not instruction.strip():
        raise ImageError("empty instruction")
    source, target = decode_image(row.get(INPUT)), decode_image(row.get(TARGET))
    try:
        mask = decode_mask(row.get(MASK))
    except ImageError as e:
        raise ImageError(f"subject mask unreadable: {e}") from e
    if mask is not None and abs(mask.shape[0] / mask.shape[1] - target.shape[0] / target.shape[1]) > 0.02:
        raise ImageError(f"subject mask {mask.shape} does not match the target {target.shape[:2]}")
    meta = {k: v for k, v in row.items() if k not in (INPUT, TARGET, PROMPT, MASK, "key")}
    return Triplet(row["key"], source, instruction.strip(), target, meta, mask)


def iter_triplets(split_dir: str | os.PathLike, batch_size: int = 8, limit: int | None = None
                  ) -> Iterator[list[Triplet | tuple[dict[str, Any], str]]]:  # fmt: skip
    """Batches of decoded :class:`Triplet` or ``(row, reject reason)`` for rows that cannot be used."""
    for rows in iter_rows(split_dir, batch_size, limit):
        out: list[Triplet | tuple[dict[str, Any], str]] = []
        for row in rows:
            try:
                out.append(to_triplet(row))
            except ImageError as e:
                out.append(({k: v for k, v in row.items() if k not in (INPUT, TARGET, MASK)}, str(e)))
        yield out
