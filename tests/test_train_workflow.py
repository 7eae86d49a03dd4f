"""End to end: the demo images through every stage; the tiny SD1.5 model trains a few dozen steps."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]
DEMO_STEPS = yaml.safe_load((Path(__file__).parents[1] / "profiles/demo/demo.yaml").read_text())["train"]["max_steps"]


def test_demo_trains_the_tiny_model(demo_run: Path) -> None:
    summary = json.loads((demo_run / "results/train/summary.json").read_text())
    assert summary["steps"] == DEMO_STEPS and summary["loss_last"] < summary["loss_first"]
    assert (demo_run / "results/train/model/model_index.json").exists()
    assert (demo_run / f"results/train/checkpoints/checkpoint-{DEMO_STEPS}").is_dir()


def test_demo_counts_reconcile_in_every_stage(demo_run: Path) -> None:
    """Images in = kept + rejected, shard by shard and stage by stage; nothing is lost between stages."""
    results = demo_run / "results"
    for stats_file in results.glob("*/stats/**/*.json"):
        stats = json.loads(stats_file.read_text())
        if "n_in" in stats:
            assert stats["n_in"] == stats["n_kept"] + stats["n_rejected"], stats_file
    ingest = json.loads((results / "ingest/stats.json").read_text())
    assert ingest["n_rejected"] == 2  # the two broken demo files, with reasons
    kept = sum(len(pd.read_parquet(p)) for p in (results / "ingest/manifests").glob("*.parquet"))
    selection = pd.read_parquet(results / "filter/selection.parquet")
    unselected = pd.read_parquet(results / "filter/unselected.parquet")
    scored = sum(len(pd.read_parquet(p)) for p in (results / "filter/scores").glob("*.parquet"))
    filter_rejects = sum(len(pd.read_parquet(p)) for p in (results / "filter/rejects").glob("*.parquet"))
    assert kept == scored + filter_rejects and scored == len(selection) + len(unselected)
    pairs = pd.concat(pd.read_parquet(p) for p in (results / "pairs/manifests").glob("*.parquet"))
    captions = pd.concat(pd.read_parquet(p) for p in (results / "captions").glob("*.parquet"))
    assert set(pairs["image_id"]) <= set(selection["image_id"])
    assert captions["instruction"].str.len().gt(0).all()
    exported = sum(
        json.loads((results / f"dataset/stats/{s}.json").read_text())["n_kept"]
        for s in ("train", "val", "test")
    )
    assert exported == len(pairs.merge(captions[["image_id"]], on="image_id"))
