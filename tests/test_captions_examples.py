"""The report's caption sheet: 20 instructions by default, one per image, taken from every split in turn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from relightflow.config import defaults
from relightflow.dataset import encode_image, features
from relightflow.evaluate.examples import caption_examples, pick_examples
from relightflow.images import load_rgb


def _split(root: Path, name: str, n_images: int, variants: int) -> Path:
    """An exported split of ``n_images`` images x ``variants`` rows (variants share the instruction)."""
    empty = {column: None for column in features()}
    rows = []
    for i in range(n_images):
        image = encode_image(np.full((32, 32, 3), 10 * i % 255, np.uint8))
        for v in range(variants):
            rows.append({**empty, "input_image": {"bytes": image, "path": None}, "edited_image": {"bytes": image, "path": None},
                         "edit_prompt": f"warm window light from the left, {name} image {i}", "image_id": f"{name}{i}",
                         "variant": v, "split": name, "light_direction": "left", "color_temperature": "warm"})  # fmt: skip
    split = root / name
    split.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=features().arrow_schema), split / "data-00000.parquet")
    return split


def test_twenty_distinct_images_from_every_split(tmp_path: Path) -> None:
    n = defaults()["evaluate"]["caption_examples"]
    assert n == 20
    splits = [_split(tmp_path, "train", 30, 3), _split(tmp_path, "val", 2, 2), _split(tmp_path, "test", 12, 2)]
    picked = pick_examples(splits, n)
    ids = [t.meta["image_id"] for _, t in picked]
    assert len(ids) == n == len(set(ids))  # one row per image, not its variants
    assert [s for s, _ in picked[:6]] == ["train", "val", "test"] * 2  # splits in turn
    assert sum(s == "val" for s, _ in picked) == 2 and sum(s == "test" for s, _ in picked) == 9

    caption_examples(splits, tmp_path / "sheet.png", tmp_path / "stats.html", n)
    sheet = load_rgb(tmp_path / "sheet.png")
    assert sheet.shape[0] > n * 192  # 20 rows of input | target with the instruction under each
    assert len(pick_examples(splits[1:2], n)) == 2  # fewer images than asked: all of them
