"""Shard drivers of the pairs stage: manifests with the contract columns, every image kept or rejected
with a reason, masks cached by content, reruns reproduce the same pixels."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from relightflow.config import section
from relightflow.errors import EnvironmentFailure
from relightflow.images import load_mask
from relightflow.manifest import read_json, read_table, write_table
from relightflow.pairs import run as pairs_run
from relightflow.pairs.run import PAIR_COLUMNS, DegradeStage, SegmentStage
from relightflow.shards import ShardOutputs, gather, run_shard
from relightflow.testing import Scene, render_scene

cv2.setNumThreads(1)
CONTRACT_SEGMENTS = ["image_id", "path", "mask_path", "mask_area", "mask_score", "segmenter"]
CONTRACT_PAIRS = ["image_id", "variant", "input_path", "target_path", "mask_path", "albedo_path", "degradation",
                  "degradation_params", "seed", "split"]  # fmt: skip


def _cfg(**overrides):
    base = {
        "segmenter": "classical", "feather_px": 2, "max_side": 160,
        "degradations": [{"kind": k, "weight": 1} for k in ("soft_shading", "cast_shadow", "color_cast", "low_key")],
        "variants": 2, "quality": {"enabled": False},  # the gate has its own tests: test_pairs_quality.py
    }  # fmt: skip
    return section("pairs", base | overrides)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """A selection with good scenes, odd modes and sizes, and images that must be rejected."""
    root = tmp_path_factory.mktemp("images")
    files = {}
    for i, side in enumerate(("left", "right")):
        image, _, _ = render_scene(Scene(horizontal=side, size=200, seed=i))
        files[f"scene{i}"] = (Image.fromarray(image), "png")
    image, _, _ = render_scene(Scene(horizontal="front", size=240, seed=9))
    files["grey"] = (Image.fromarray(image).convert("L"), "png")
    files["rgba"] = (Image.fromarray(image).convert("RGBA"), "png")
    files["palette"] = (Image.fromarray(image).convert("P"), "png")
    files["deep"] = (Image.fromarray(image[..., 0].astype(np.uint16) * 257), "png")
    files["odd"] = (Image.fromarray(np.ascontiguousarray(image[:173, :131])), "jpg")
    files["flat"] = (Image.new("RGB", (150, 120), (90, 90, 90)), "png")
    paths = {}
    for name, (img, ext) in files.items():
        paths[name] = root / f"{name}.{ext}"
        img.save(paths[name])
    paths["corrupt"] = root / "corrupt.jpg"
    paths["corrupt"].write_bytes(b"\xff\xd8 not really a jpeg")
    paths["missing"] = root / "missing.png"
    rows = [
        {"image_id": n, "path": str(p), "lighting_score": 0.5, "split": "train"} for n, p in paths.items()
    ]
    selected = root / "selected.parquet"
    write_table(selected, rows)
    return selected, len(rows)


def _segment(tmp, selected, cfg, cache):
    out = {k: tmp / k for k in ("segments.parquet", "masks", "rejects.parquet", "stats.json")}
    outputs = ShardOutputs(out["segments.parquet"], out["rejects.parquet"], out["stats.json"])
    stats = run_shard(SegmentStage(selected, cfg, cache, out["masks"]), "00000", outputs)
    return stats, out


def _degrade(tmp, segments, cfg, seed=42, threads=2):
    out = {k: tmp / k for k in ("pairs.parquet", "images", "contact.png", "rejects.parquet", "stats.json")}
    stage = DegradeStage(segments, cfg, seed, out["images"], out["contact.png"], threads=threads)
    stats = run_shard(stage, "00000", ShardOutputs(out["pairs.parquet"], out["rejects.parquet"], out["stats.json"]))
    return stats, out


@pytest.fixture(scope="module")
def segmented(shard, tmp_path_factory):
    selected, n = shard
    tmp = tmp_path_factory.mktemp("seg")
    stats, out = _segment(tmp, selected, _cfg(), tmp / "cache")
    return stats, out, tmp / "cache"


def test_segment_keeps_or_rejects_every_image(shard, segmented):
    _, n = shard
    stats, out, _ = segmented
    assert stats.n_in == n == stats.n_kept + stats.n_rejected
    seg = read_table(out["segments.parquet"])
    assert list(seg.columns[: len(CONTRACT_SEGMENTS)]) == CONTRACT_SEGMENTS
    assert set(seg.image_id) == {"scene0", "scene1", "grey", "rgba", "palette", "deep", "odd"}
    reasons = dict(read_table(out["rejects.parquet"])[["image_id", "reason"]].values)
    assert reasons["missing"] == "missing file"
    assert reasons["corrupt"].startswith(("corrupt image", "not an image"))
    assert reasons["flat"] == "empty mask"
    for row in seg.itertuples():
        mask = load_mask(row.mask_path)
        assert abs(mask.mean() - row.mask_area) < 0.02 and row.segmenter == "classical"
    assert read_json(out["stats.json"])["n_rejected"] == 3


def test_tiny_masks_are_rejected_with_a_reason(shard, tmp_path):
    selected, n = shard
    stats, out = _segment(tmp_path, selected, _cfg(min_mask_fraction=0.97), tmp_path / "cache")
    reasons = read_table(out["rejects.parquet"]).reason
    assert stats.n_kept == 0 and reasons.str.startswith("mask too small").sum() == 7


def test_segment_cache_skips_the_model(shard, segmented, tmp_path, monkeypatch):
    selected, _ = shard
    _, first, cache = segmented

    def no_model(cfg, device=None):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(pairs_run, "build_segmenter", no_model)
    stats, out = _segment(tmp_path, selected, _cfg(), cache)
    assert stats.n_kept == 7
    a, b = read_table(first["segments.parquet"]), read_table(out["segments.parquet"])
    assert a.drop(columns="mask_path").equals(b.drop(columns="mask_path"))
    # a different segmenter config is a different key: the model is needed again, and a model that cannot
    # load fails the job (a setup error) rather than rejecting every image
    with pytest.raises(EnvironmentFailure, match="cache should have answered"):
        _segment(tmp_path / "other", selected, _cfg(classical={"iterations": 2}), cache)


def test_degrade_writes_contract_rows_and_reproduces_pixels(segmented, tmp_path):
    _, seg_out, _ = segmented
    stats, out = _degrade(tmp_path / "a", seg_out["segments.parquet"], _cfg())
    assert stats.n_in == stats.n_kept == 7
    pairs = read_table(out["pairs.parquet"])
    assert (
        list(pairs.columns) == PAIR_COLUMNS and list(pairs.columns[: len(CONTRACT_PAIRS)]) == CONTRACT_PAIRS
    )
    assert len(pairs) == 14 and sorted(set(pairs.variant)) == [0, 1]
    for row in pairs.itertuples():
        params = json.loads(row.degradation_params)
        assert params["kind"] == row.degradation
        x, y = cv2.imread(row.input_path), cv2.imread(row.target_path)
        assert x.shape == y.shape == cv2.imread(row.albedo_path).shape
    assert cv2.imread(str(out["contact.png"])) is not None
    _, again = _degrade(tmp_path / "b", seg_out["segments.parquet"], _cfg(), threads=1)
    pairs2 = read_table(again["pairs.parquet"])
    assert pairs[["image_id", "variant", "degradation", "degradation_params", "seed"]].equals(
        pairs2[["image_id", "variant", "degradation", "degradation_params", "seed"]]
    )
    for p1, p2 in zip(pairs.input_path, pairs2.input_path, strict=True):
        assert np.array_equal(cv2.imread(p1), cv2.imread(p2))
    _, other = _degrade(tmp_path / "c", seg_out["segments.parquet"], _cfg(), seed=7)
    assert not read_table(other["pairs.parquet"]).seed.equals(pairs.seed)


def test_degrade_rejects_a_missing_mask_and_gathers(segmented, tmp_path):
    _, seg_out, _ = segmented
    seg = read_table(seg_out["segments.parquet"])
    seg.loc[0, "mask_path"] = str(tmp_path / "gone.png")
    broken = tmp_path / "segments.parquet"
    write_table(broken, seg)
    stats, out = _degrade(tmp_path / "d", broken, _cfg(variants=1, background="grey"))
    assert stats.n_kept == 6 and stats.n_rejected == 1
    assert read_table(out["rejects.parquet"]).reason[0].startswith("mask unreadable")
    summary = gather(
        [seg_out["stats.json"], out["stats.json"]], [seg_out["rejects.parquet"], out["rejects.parquet"]],
        tmp_path / "stats.json", tmp_path / "rejects.parquet",
    )  # fmt: skip
    degrade = summary["stages"]["degrade"]
    assert degrade["n_rows"] == 6 and degrade["n_rejected"] == 1 and sum(degrade["counts"]["kinds"].values()) == 6
    assert summary["stages"]["segment"]["n_in"] == 10 and len(read_table(tmp_path / "rejects.parquet")) == 4


def test_whole_frame_segmenter_end_to_end(shard, tmp_path):
    selected, n = shard
    cfg = _cfg(segmenter="none", background="blur", variants=1)
    stats, out = _segment(tmp_path, selected, cfg, tmp_path / "cache")
    assert stats.n_kept == 8 and stats.n_rejected == 2  # the flat image is kept: the frame is the subject
    assert (read_table(out["segments.parquet"]).mask_area == 1.0).all()
    stats, out = _degrade(tmp_path / "pairs", out["segments.parquet"], cfg)
    assert stats.n_kept == 8 and stats.n_rejected == 0
    assert set(read_table(out["pairs.parquet"]).background) == {"blur"}


def test_mask_cache_key_follows_the_checkpoint_content(tmp_path):
    """Replacing a checkpoint under the same name must not reuse masks cached with the old one."""
    ckpt = tmp_path / "sam.pt"
    ckpt.write_bytes(b"weights v1")
    cfg = _cfg(segmenter="sam2", sam2={"checkpoint": str(ckpt)})
    first = pairs_run.segment_cache_key("image-digest", cfg)
    assert pairs_run.segment_cache_key("image-digest", cfg) == first
    ckpt.write_bytes(b"weights v2, retrained")
    assert pairs_run.segment_cache_key("image-digest", cfg) != first
    hub = _cfg(segmenter="sam2", sam2={"checkpoint": "facebook/sam2.1-hiera-large"})
    assert pairs_run.segment_cache_key("image-digest", hub) != pairs_run.segment_cache_key("other", hub)
