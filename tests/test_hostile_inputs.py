"""The hostile corpus (tests/broken_corpus.py, 40+ kinds) through every stage that opens images: the one
opener and the one shard driver. No stage crashes; every image in is kept or rejected with a reason; the
bad files are rejected by every stage that is handed them (not only by ingest), the good ones kept."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from broken_corpus import KEEP, make_corpus
from conftest import run_snakemake

from relightflow.captions.run import CaptionStage
from relightflow.config import section
from relightflow.evaluate.data import decode_image
from relightflow.filter.score import ScoreStage
from relightflow.images import ImageError, path_id, save_image
from relightflow.manifest import read_json, read_table, write_table
from relightflow.pairs.run import DegradeStage, SegmentStage
from relightflow.shards import ShardOutputs, run_shard

NOT_UTF8 = os.fsdecode(b"bad/latin1_\xe9t\xe9.jpg")  # cannot be stored in a manifest; ingest rejects its name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile") / "images"
    expected = make_corpus(root)
    (root.parent / "n_listed").write_text(str(len(expected)))
    expected.pop(NOT_UTF8)
    expected = {rel: o for rel, o in expected.items() if not o.startswith("too small")}  # ingest's size policy
    if os.geteuid() == 0:  # root reads a chmod-000 file: that case is covered by test_ingest under setpriv
        expected.pop("bad/unreadable.jpg")
    yield root, expected
    (root / "bad/unreadable.jpg").chmod(0o644)


@pytest.fixture(scope="module")
def manifest(corpus, tmp_path_factory) -> Path:
    """Every corpus file as a selected row: later stages get the files ingest would have rejected too."""
    root, expected = corpus
    rows = [{"image_id": path_id(rel), "path": str(root / rel), "width": 96, "height": 96, "split": "train"}
            for rel in sorted(expected)]  # fmt: skip
    path = tmp_path_factory.mktemp("manifest") / "selected.parquet"
    write_table(path, rows)
    return path


def _run(stage, out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    outputs = ShardOutputs(out / "table.parquet", out / "rejects.parquet", out / "stats.json")
    run_shard(stage, "00000", outputs)
    return read_table(outputs.table), read_table(outputs.rejects), read_json(outputs.stats)


def _check(corpus, kept: pd.DataFrame, rejects: pd.DataFrame, stats: dict) -> None:
    root, expected = corpus
    assert stats["n_in"] == len(expected) == stats["n_kept"] + stats["n_rejected"]
    rel = {path_id(r): r for r in expected}
    kept_rel = {rel[i] for i in kept["image_id"]}
    assert kept_rel == {r for r, outcome in expected.items() if outcome == KEEP}
    assert rejects["reason"].str.len().gt(0).all()


def test_every_bad_file_is_rejected_by_the_opener(corpus) -> None:
    root, expected = corpus
    for rel, outcome in expected.items():
        if outcome == KEEP:
            assert decode_image({"path": str(root / rel)}).ndim == 3
            continue
        with pytest.raises(ImageError):
            decode_image({"path": str(root / rel)})
        if (root / rel).is_file() and os.access(root / rel, os.R_OK):
            with pytest.raises(ImageError):  # the same bytes as a dataset cell
                decode_image({"bytes": (root / rel).read_bytes()})


def test_filter_stage(corpus, manifest, tmp_path) -> None:
    cfg = section("filter", stats={"num_workers": 0})["stats"]
    _check(corpus, *_run(ScoreStage(manifest, "stats", cfg), tmp_path))


def test_pairs_stages(corpus, manifest, tmp_path) -> None:
    cfg = section("pairs", segmenter="none", max_side=96, degradations=[{"kind": "color_cast"}],
                  quality={"enabled": False})  # only the files decide here (the gate: test_pairs_quality.py)
    seg, rejects, stats = _run(SegmentStage(manifest, cfg, tmp_path / "cache", tmp_path / "masks"), tmp_path / "seg")
    _check(corpus, seg, rejects, stats)
    # degrade gets every file too, each with a valid mask: it must reject the bad ones itself
    mask = str(tmp_path / "mask.png")
    save_image(mask, np.ones((96, 96), bool))
    rows = read_table(manifest).assign(mask_path=mask)
    write_table(tmp_path / "segments.parquet", rows)
    stage = DegradeStage(tmp_path / "segments.parquet", cfg, 0, tmp_path / "images", tmp_path / "sheet.png", threads=2)
    _check(corpus, *_run(stage, tmp_path / "deg"))


def test_captions_stage(corpus, manifest, tmp_path) -> None:
    stage = CaptionStage(manifest, None, section("captions", provider="measured"), tmp_path / "cache")
    _check(corpus, *_run(stage, tmp_path))


@pytest.mark.slow
def test_workflow_on_the_corpus_crashes_no_job(corpus, workdir: Path) -> None:
    """Real Snakemake, every stage up to captions on the corpus; ingest without its decode check, so that
    truncated files reach the later stages' decoders. Each stage's images in = kept + rejected."""
    root, expected = corpus
    cfg = {"input": {"root": str(root)}, "shards": {"size": 100}, "ingest": {"verify": False, "min_side": 8},
           "stages": ["ingest", "filter", "pairs", "captions"],
           "filter": {"backend": "stats", "min_side": 8, "dedup": {"phash_distance": None}},
           "pairs": {"segmenter": "none", "max_side": 96, "threads": 1},
           "captions": {"provider": "measured"}}  # fmt: skip
    (workdir / "c.yaml").write_text(yaml.safe_dump(cfg))
    run_snakemake(workdir, "--configfile", str(workdir / "c.yaml"))
    res = workdir / "results"
    ingest = read_json(res / "ingest/stats.json")
    listed = int((root.parent / "n_listed").read_text())
    assert ingest["n_in"] == listed == ingest["n_kept"] + ingest["n_rejected"]
    chain = [("filter", read_json(res / "filter/stats/00000.json")),
             ("segment", read_json(res / "pairs/stats/segment/00000.json")),
             ("degrade", read_json(res / "pairs/stats/degrade/00000.json")),
             ("captions", read_json(res / "captions/stats.json"))]  # fmt: skip
    for name, s in chain:
        assert s["n_in"] == s["n_kept"] + s["n_rejected"], name
    assert chain[0][1]["n_in"] == ingest["n_kept"] and chain[0][1]["n_rejected"] > 0  # truncated files
    kept = set(read_table(res / "captions/00000.parquet")["path"].map(lambda p: os.path.relpath(p, root)))
    assert kept and all(expected.get(k, KEEP) == KEEP for k in kept)
