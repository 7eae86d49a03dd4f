"""Caption examples and statistics of the exported dataset, for the report.

A sheet shows examples of the exported splits — one row per image (an image's variants share one
instruction), taken in turn from each split: input | target, the instruction underneath with its split,
source and the attributes it states; an HTML page counts, per split, the caption sources, light directions and colour
temperatures and summarises instruction lengths. Only scalar columns are streamed for the counts.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from relightflow.dataset import data_files
from relightflow.evaluate.data import Triplet, iter_triplets
from relightflow.evaluate.grids import save_grid
from relightflow.evaluate.summary import STYLE
from relightflow.manifest import iter_batches, write_text

log = logging.getLogger(__name__)

COUNTED = ("caption_source", "light_direction", "color_temperature")


def split_counts(split_dir: str | os.PathLike) -> tuple[dict[str, Counter], list[int]]:
    """Value counts of :data:`COUNTED` columns and the instruction lengths (words) of one split."""
    counts: dict[str, Counter] = {c: Counter() for c in COUNTED}
    lengths: list[int] = []
    for path in data_files(split_dir):
        present = [c for c in (*COUNTED, "edit_prompt") if c in pq.read_schema(path).names]
        for frame in iter_batches(path, batch_size=1024, columns=present):
            for column in COUNTED:
                if column in frame:
                    counts[column].update(frame[column].fillna("(none)").astype(str))
            if "edit_prompt" in frame:
                lengths += frame["edit_prompt"].fillna("").str.split().str.len().tolist()
    return counts, lengths


def stats_html(split_dirs: Sequence[str | os.PathLike]) -> str:
    """An HTML page: rows and instruction lengths per split, then one count table per attribute."""
    per_split = {Path(d).name: split_counts(d) for d in split_dirs}
    summary = pd.DataFrame(
        {
            name: {
                "rows": len(lengths),
                "words (mean)": sum(lengths) / len(lengths) if lengths else 0,
                "words (min)": min(lengths, default=0),
                "words (max)": max(lengths, default=0),
            }  # fmt: skip
            for name, (_, lengths) in per_split.items()
        }
    ).T.astype({"rows": int, "words (min)": int, "words (max)": int})
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>", STYLE, "</head><body>"]
    parts += ["<h3>Instructions per split</h3>", summary.to_html(float_format="%.1f")]
    for column in COUNTED:
        table = pd.DataFrame({name: counts[column] for name, (counts, _) in per_split.items()}).fillna(0)
        if len(table):
            parts += [f"<h3>{column.replace('_', ' ')}</h3>", table.astype(int).sort_index().to_html()]
    return "\n".join(parts) + "</body></html>\n"


def _distinct_images(split_dir: str | os.PathLike) -> Iterator[Triplet]:
    """The decodable rows of a split, the first row of each image only."""
    seen: set[str] = set()
    for batch in iter_triplets(split_dir, batch_size=8):
        for t in batch:
            image = str(t.meta.get("image_id") or t.key) if isinstance(t, Triplet) else None
            if image is not None and image not in seen:
                seen.add(image)
                yield t


def pick_examples(split_dirs: Sequence[str | os.PathLike], num_examples: int) -> list[tuple[str, Triplet]]:
    """Up to ``num_examples`` (split name, row) pairs, one per image, taken from the splits in turn."""
    streams = [(Path(d).name, _distinct_images(d)) for d in split_dirs]
    picked: list[tuple[str, Triplet]] = []
    while streams and len(picked) < num_examples:
        for stream in list(streams):
            row = next(stream[1], None)
            if row is None:
                streams.remove(stream)
            elif len(picked) < num_examples:
                picked.append((stream[0], row))
    return picked


def caption_examples(split_dirs: Sequence[str | os.PathLike], sheet_path: str | os.PathLike,
                     html_path: str | os.PathLike, num_examples: int = 20) -> None:  # fmt: skip
    """Write the example sheet (``num_examples`` images, see :func:`pick_examples`) and the stats page."""
    picked = pick_examples(split_dirs, num_examples)
    rows = [[t.input, t.target] for _, t in picked]
    captions = [f"[{split}] {t.instruction} ({', '.join(str(t.meta[c]) for c in COUNTED if t.meta.get(c))})"
                for split, t in picked]  # fmt: skip
    save_grid(sheet_path, rows, captions, ["input", "target"], cell=192)
    write_text(html_path, stats_html(split_dirs))
    log.info("%d caption examples from %d splits", len(rows), len(split_dirs))
