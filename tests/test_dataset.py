"""Dataset export: join, rejects, streaming files, load_dataset round trip, WebDataset shards."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from relightflow.dataset import export_split, fit_shorter_side, load_split, write_webdataset
from relightflow.images import load_rgb
from relightflow.manifest import read_json, read_table, write_table
from relightflow.shards import gather
from relightflow.testing.tiny_sd import write_triplet_fixture


@pytest.fixture
def upstream(tmp_path: Path) -> dict:
    """7 images over 2 shards and 2 splits, plus broken rows: no caption, empty caption, missing image."""
    paths = write_triplet_fixture(tmp_path / "up", n_images=7, size=48, splits=("train", "val"))
    captions = read_table(paths["captions"][0])
    captions.loc[captions.index[0], "instruction"] = "   "  # img0000 (train): blank
    write_table(paths["captions"][0], captions)
    captions = read_table(paths["captions"][1])
    write_table(paths["captions"][1], captions[captions.image_id != "img0003"])  # img0003 (val): none
    pairs = read_table(paths["pairs"][0])
    pairs.loc[pairs.image_id == "img0002", "input_path"] = str(tmp_path / "gone.png")  # train: missing
    write_table(paths["pairs"][0], pairs)
    return paths


def _export(upstream: dict, tmp_path: Path, split: str, **cfg):
    out = tmp_path / "dataset" / split
    stats = export_split(
        split, upstream["selection"], upstream["pairs"], upstream["captions"], out,
        tmp_path / "stats" / f"{split}.json", tmp_path / "rejects" / f"{split}.parquet",
        {"resolution": 32, "rows_per_file": 1, **cfg},
    )  # fmt: skip
    return out, stats


def test_export_rejects_and_counts(upstream: dict, tmp_path: Path) -> None:
    out, stats = _export(upstream, tmp_path, "train")
    # train = img0000, img0002, img0004, img0006: blank caption and missing image are rejected
    assert (stats.n_in, stats.n_kept, stats.n_rejected) == (4, 2, 2)
    rejects = read_table(tmp_path / "rejects" / "train.parquet").set_index("image_id")
    assert rejects.loc["img0000", "reason"] == "no instruction"
    assert rejects.loc["img0002", "reason"] == "missing file"
    assert sorted(p.name for p in out.iterdir()) == ["data-00000.parquet", "data-00001.parquet"]
    saved = read_json(tmp_path / "stats" / "train.json")
    assert saved["n_in"] == saved["n_kept"] + saved["n_rejected"]
    _, val = _export(upstream, tmp_path, "val")
    assert (val.n_in, val.n_kept, val.reasons) == (3, 2, {"no instruction": 1})


def test_load_dataset_round_trip(upstream: dict, tmp_path: Path) -> None:
    out, _ = _export(upstream, tmp_path, "train", rows_per_file=10, resolution=32)
    ds = load_split(out)
    assert {"input_image", "edit_prompt", "edited_image", "image_id", "degradation_params"} <= set(
        ds.column_names
    )
    assert type(ds.features["input_image"]).__name__ == "Image"
    row = ds[0]
    assert row["image_id"] == "img0004" and row["edit_prompt"] == "soft light from the left, neutral tone"
    assert json.loads(row["degradation_params"]) == {"exposure": 0.55}
    assert row["input_image"].size == (32, 32) and row["edited_image"].mode == "RGB"
    source = fit_shorter_side(load_rgb(Path(upstream["selection"]).parent / "images" / "img0004.png"), 32)
    np.testing.assert_array_equal(np.asarray(row["edited_image"]), source)  # PNG is lossless
    # row groups are small: a reader never needs a whole file in memory
    assert pq.ParquetFile(out / "data-00000.parquet").metadata.row_group(0).num_rows <= 32


def test_rerun_replaces_folder_and_empty_split_loads(upstream: dict, tmp_path: Path) -> None:
    out, _ = _export(upstream, tmp_path, "train", rows_per_file=1)
    assert len(list(out.glob("data-*.parquet"))) == 2
    out, _ = _export(upstream, tmp_path, "train", rows_per_file=10)
    assert [p.name for p in out.iterdir()] == ["data-00000.parquet"]  # no stale files left behind
    empty, stats = _export(upstream, tmp_path, "test")
    assert stats.n_in == 0 and len(load_split(empty)) == 0


def test_webdataset_shards(upstream: dict, tmp_path: Path) -> None:
    wds = tmp_path / "wds" / "train"
    export_split(
        "train", upstream["selection"], upstream["pairs"], upstream["captions"], tmp_path / "ds",
        tmp_path / "s.json", tmp_path / "r.parquet", {"rows_per_file": 1}, webdataset_dir=wds,
    )  # fmt: skip
    tars = sorted(wds.glob("*.tar"))
    assert [t.name for t in tars] == ["train-00000.tar", "train-00001.tar"]
    with tarfile.open(tars[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    assert sorted(n.split(".", 1)[1] for n in names) == ["input.png", "json", "target.png", "txt"]
    assert meta["image_id"] == "img0004" and "input_image" not in meta
    assert isinstance(pd.read_parquet(tmp_path / "r.parquet"), pd.DataFrame)
    again = tmp_path / "wds2"
    assert write_webdataset(tmp_path / "ds", again, rows_per_file=5) == 2
    with tarfile.open(again / "ds-00000.tar") as tar:
        assert len(tar.getnames()) == 8


def test_summary_merges_splits(upstream: dict, tmp_path: Path) -> None:
    for split in ("train", "val"):
        _export(upstream, tmp_path, split)
    summary = gather(
        [tmp_path / "stats" / f"{s}.json" for s in ("train", "val")],
        [tmp_path / "rejects" / f"{s}.parquet" for s in ("train", "val")], tmp_path / "all.json", tmp_path / "r.parquet",
    )  # fmt: skip
    assert summary["n_in"] == 7 and summary["n_kept"] == 4 and set(summary["stages"]["dataset"]["shards"]) == {"train", "val"}
    assert summary["reasons"] == {"no instruction": 2, "missing file": 1} and len(read_table(tmp_path / "r.parquet")) == 3
