"""Selection: cut, ties, dedup, stratified seeded splits, per-shard outputs and plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relightflow.config import section
from relightflow.filter import select
from relightflow.images import save_image
from relightflow.manifest import read_json, read_table, write_table
from relightflow.testing import render_scene

CFG = section("filter", min_side=64, dedup={"phash_distance": None})


def _scores(n: int, seed: int = 0, shards: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "image_id": [f"{i:04d}" for i in range(n)],
            "path": [f"/img/{i}.jpg" for i in range(n)],
            "lighting_score": rng.random(n),
            "shard": [f"{i % shards:05d}" for i in range(n)],
            "width": 512,
            "height": 384,
            "backend": "stats",
            "model": "stats-v1",
            "phash": [f"{int(h):016x}" for h in rng.integers(0, 2**63, n)],
        }
    )


def _write_shards(tmp_path, frame: pd.DataFrame, shards: list[str]) -> list:
    paths = []
    for shard in shards:
        path = tmp_path / "scores" / f"{shard}.parquet"
        write_table(path, frame[frame["shard"] == shard], columns=list(frame.columns))
        paths.append(path)
    return paths


def _run(tmp_path, frame, cfg=CFG, seed=42, shards=("00000", "00001", "00002"), plots=False):
    score_paths = _write_shards(tmp_path, frame, list(shards))
    outputs = {k: tmp_path / f"{k}.parquet" for k in ("selection", "unselected", "train", "val", "test")}
    outputs["stats"] = tmp_path / "stats.json"
    if plots:
        outputs |= {"histogram": tmp_path / "hist.png", "contact_sheet": tmp_path / "sheet.png"}
    selected = {s: tmp_path / "selected" / f"{s}.parquet" for s in shards}
    summary = select.select_images(score_paths, selected, outputs, cfg, seed)
    return summary, read_table(outputs["selection"]), read_table(outputs["unselected"]), selected


def test_same_seed_same_splits_other_seed_other_splits(tmp_path):
    frame = _scores(300)
    _, a, _, _ = _run(tmp_path / "a", frame, seed=1)
    _, b, _, _ = _run(
        tmp_path / "b", frame.sample(frac=1, random_state=3), seed=1
    )  # row order must not matter
    _, c, _, _ = _run(tmp_path / "c", frame, seed=2)
    assert a[["image_id", "split"]].equals(b[["image_id", "split"]])
    assert (a.set_index("image_id")["split"] != c.set_index("image_id")["split"]).sum() > 20


def test_splits_have_the_ratios_and_span_the_score_range(tmp_path):
    summary, sel, _, _ = _run(tmp_path, _scores(1000))
    counts = sel["split"].value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (800, 100, 100)
    for split in ("val", "test"):
        ranks = sel.loc[sel["split"] == split, "rank"]
        assert ranks.min() < 10 and ranks.max() >= 990  # in every block of 10 ranks, not the tail
        assert np.bincount(ranks // 10, minlength=100).tolist() == [1] * 100
    means = {s: v["mean_score"] for s, v in summary["splits"].items()}
    assert max(means.values()) - min(means.values()) < 0.01


def test_top_k_ties_broken_by_image_id(tmp_path):
    frame = _scores(10)
    frame["lighting_score"] = [0.9, 0.5, 0.5, 0.5, 0.1, 0.5, 0.2, 0.3, 0.5, 0.4]
    _, sel, unsel, _ = _run(tmp_path, frame, {**CFG, "num_images": 3})
    assert sel["image_id"].tolist() == ["0000", "0001", "0002"]
    assert set(unsel.loc[unsel["lighting_score"] == 0.5, "image_id"]) == {"0003", "0005", "0008"}
    assert (unsel["reason"] == "below the selection cut").all()


def test_k_larger_than_dataset_keeps_everything(tmp_path):
    summary, sel, unsel, _ = _run(tmp_path, _scores(7), {**CFG, "num_images": 1000})
    assert len(sel) == 7 and len(unsel) == 0 and summary["n_selected"] == 7


@pytest.mark.parametrize(("key", "value", "expected"), [("threshold", 0.5, None), ("top_fraction", 0.25, 25)])
def test_threshold_and_top_fraction(tmp_path, key, value, expected):
    frame = _scores(100)
    _, sel, _, _ = _run(tmp_path, frame, {**CFG, key: value})
    expected = expected if expected is not None else int((frame["lighting_score"] >= value).sum())
    assert len(sel) == expected
    assert sel["lighting_score"].min() >= frame["lighting_score"].nlargest(len(sel)).min()


def test_empty_shard_gets_an_empty_selection_file(tmp_path):
    frame = _scores(12, shards=2)  # shard 00002 has no rows at all
    summary, sel, _, selected = _run(tmp_path, frame)
    empty = read_table(selected["00002"])
    assert len(empty) == 0 and list(empty.columns) == select.SHARD_COLUMNS
    parts = pd.concat([read_table(p) for p in selected.values()])
    assert sorted(parts["image_id"]) == sorted(sel["image_id"])
    assert summary["n_scored"] == 12


def test_no_scores_at_all(tmp_path):
    summary, sel, unsel, selected = _run(tmp_path, _scores(0), plots=True)
    assert len(sel) == 0 and len(unsel) == 0 and summary["cut_score"] is None
    assert all(p.exists() for p in selected.values())


def test_min_side_and_phash_dedup_keep_the_better_copy(tmp_path):
    frame = _scores(20)
    frame.loc[3, ["width", "height"]] = (800, 40)
    best = frame["lighting_score"].idxmax()
    frame.loc[5, "phash"] = f"{int(frame.loc[best, 'phash'], 16) ^ 0b1011:016x}"  # 3 bits from the best
    frame.loc[5, "lighting_score"] = frame["lighting_score"].min() - 0.01
    cfg = {**CFG, "dedup": {"phash_distance": 4, "embedding_cosine": None}}
    summary, sel, unsel, _ = _run(tmp_path, frame, cfg)
    reasons = dict(zip(unsel["image_id"], unsel["reason"], strict=True))
    assert reasons["0003"].startswith("too small")
    assert reasons["0005"] == f"near-duplicate (phash): of {frame.loc[best, 'image_id']}"
    assert summary["n_scored"] == len(sel) + len(unsel) == 20


def test_phash_duplicates_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 40, dtype=np.int64).astype(np.uint64)
    flips = [
        np.uint64(sum(1 << int(b) for b in rng.choice(64, k, replace=False))) for k in rng.integers(0, 8, 80)
    ]
    hashes = np.concatenate([base, base[rng.integers(0, 40, 80)] ^ np.array(flips, dtype=np.uint64)])
    fast = select.phash_duplicates(hashes, 4)
    kept: list[int] = []
    for i, h in enumerate(hashes):
        close = [j for j in kept if bin(int(h) ^ int(hashes[j])).count("1") <= 4]
        assert fast[i] == (close[0] if close else -1)
        if not close:
            kept.append(i)


def test_embedding_dedup(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(6, 16))
    emb[4] = emb[1] + 0.01 * rng.normal(size=16)
    dup = select.embedding_duplicates(emb, 0.98, chunk=4)
    assert dup.tolist() == [-1, -1, -1, -1, 1, -1]
    frame = _scores(6)
    frame["lighting_score"] = np.linspace(1, 0.5, 6)
    frame["embedding"] = list(emb.astype(np.float32))
    _, sel, unsel, _ = _run(tmp_path, frame, {**CFG, "dedup": {"phash_distance": None, "embedding_cosine": 0.98}})
    assert unsel["image_id"].tolist() == ["0004"] and "embedding" not in sel


def test_embedding_dedup_without_embeddings_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="store_embeddings"):
        _run(tmp_path, _scores(5), {**CFG, "dedup": {"phash_distance": None, "embedding_cosine": 0.9}})


def test_per_shard_files_do_not_change_when_another_shard_grows(tmp_path):
    """Adding an image to one shard must leave the other shards' selection files byte-identical."""
    frame = _scores(90)
    _, _, _, selected = _run(tmp_path, frame)
    before = {s: p.read_bytes() for s, p in selected.items()}
    grown = pd.concat([frame, _scores(91, seed=5).iloc[[90]].assign(shard="00001")], ignore_index=True)
    _, _, _, selected = _run(tmp_path, grown)
    after = {s: p.read_bytes() for s, p in selected.items()}
    assert after["00000"] == before["00000"] and after["00002"] == before["00002"]
    assert after["00001"] != before["00001"]


def test_plots_and_stats_written(tmp_path):
    root = tmp_path / "imgs"
    rows = []
    for i, exposure in enumerate(np.linspace(0.2, 2.0, 12)):
        path = root / f"{i}.jpg"
        save_image(path, render_scene(exposure=float(exposure), size=96, seed=i)[0])
        rows.append({"image_id": f"{i:04d}", "path": str(path), "lighting_score": 1 - abs(1 - exposure)})
    frame = _scores(12).drop(columns=["image_id", "path", "lighting_score"]).join(pd.DataFrame(rows))
    summary, sel, _, _ = _run(tmp_path, frame, {**CFG, "num_images": 6}, plots=True)
    for name in ("hist.png", "sheet.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = read_json(tmp_path / "stats.json")
    assert stats["n_selected"] == 6 and stats["reasons"] == {"below the selection cut": 6}
    assert stats["cut_score"] == pytest.approx(sel["lighting_score"].min())
    mtime = (tmp_path / "hist.png").stat().st_mtime_ns
    _run(tmp_path, frame, {**CFG, "num_images": 6}, plots=True)
    assert (tmp_path / "hist.png").stat().st_mtime_ns == mtime  # identical figure is not rewritten
