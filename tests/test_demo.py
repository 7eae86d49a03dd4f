"""The demo workflow end to end on the CPU (one run shared by every test here), then `snakemake --report`,
rendered in headless chromium.

Checks: the model trained; counts reconcile in every stage; the evaluation ran with its baselines; the report holds every stage's flagged results with
rendered captions; every image of the report decodes in the browser; no link points at a missing file;
the screenshot (with the evaluation grid opened) is not blank.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from relightflow.images import load_rgb
from relightflow.manifest import read_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]
SCREENSHOT = REPO / "scripts/report_screenshot.sh"


def report_json(html: str, name: str) -> dict:
    """A JSON object the report embeds as ``var <name> = {...};``."""
    match = re.search(rf"var {name} = (\{{.*?\}});\s*$", html, re.MULTILINE | re.DOTALL)
    assert match, f"no '{name}' data in the report"
    return json.loads(match.group(1))


def test_demo_evaluation_has_baseline_and_runtimes(demo_run: Path) -> None:
    metrics = read_json(demo_run / "results/evaluate/metrics.json")
    assert metrics["n_images"] > 0 and metrics["systems"][:1] == ["model"]
    assert {"model", "identity"} <= set(metrics["metrics"])
    for system in ("model", "identity"):
        assert {"psnr", "ssim", "direction_agreement"} <= set(metrics["metrics"][system])
    stats = read_json(demo_run / "results/evaluate/stats.json")
    assert stats["n_in"] == stats["n_kept"] + stats["n_rejected"]
    runtimes = (demo_run / "results/runtimes/runtimes.html").read_text()
    for rule in ("ingest", "evaluate"):
        assert f"<th>{rule}</th>" in runtimes


def test_report_has_every_stage_and_clean_captions(demo_run: Path) -> None:
    html = (demo_run / "report.html").read_text(encoding="utf-8")
    results = report_json(html, "results")
    paths = set(results)
    for expected in ("results/evaluate/grid.png", "results/evaluate/metrics.html", "results/evaluate/metrics.png",
                     "results/evaluate/caption_examples.png", "results/runtimes/runtimes.png"):  # fmt: skip
        assert expected in paths, f"{expected} missing from the report"
    stages = ["1. Ingest", "2. Filter", "3. Pairs", "4. Captions", "5. Dataset", "6. Train", "7. Evaluate"]
    assert set(report_json(html, "categories")) >= {*stages, "8. Runtimes"}
    for path, entry in results.items():
        assert entry["caption"].strip(), f"{path} has no caption"
        assert "System Message" not in entry["caption"], f"docutils error in the caption of {path}"
    assert "System Message" not in html.split("var results", 1)[0]  # workflow description rendered cleanly
    # every link or image source outside the embedded data resolves: data/javascript/anchors/web or a file
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        if not re.match(r"(data:|javascript:|#|https?://|mailto:)", ref):
            assert (demo_run / ref).exists(), f"broken link in the report: {ref}"


def test_report_renders_in_chromium(demo_run: Path, chromium: str, tmp_path: Path) -> None:
    shot, dom = tmp_path / "report.png", tmp_path / "dom.html"
    env = {**os.environ, "CHROMIUM": chromium, "DUMP_DOM": str(dom)}
    proc = subprocess.run(
        ["bash", str(SCREENSHOT), str(demo_run / "report.html"), str(shot), "evaluate/grid.png"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check = re.search(r'<div id="rf-check"([^>]*)>', dom.read_text(encoding="utf-8"))
    assert check, "the checking script did not run in the browser"
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', check.group(1)))
    n_images = sum(r["mime_type"].startswith("image/") for r in report_json(
        (demo_run / "report.html").read_text(encoding="utf-8"), "results").values())  # fmt: skip
    assert int(attrs["images"]) == n_images >= 5
    assert attrs["broken"] == "", f"images that did not decode in chromium: {attrs['broken']}"
    assert attrs["opened"] == "results/evaluate/grid.png"
    image = load_rgb(shot).astype(np.float32)
    assert image.shape[0] >= 600 and image.shape[1] >= 1000
    assert image.std() > 20 and (image.min(axis=2) < 200).mean() > 0.2  # the opened grid fills the page


def test_demo_trains_the_tiny_model(demo_run: Path) -> None:
    steps = yaml.safe_load((REPO / "profiles/demo/demo.yaml").read_text())["train"]["max_steps"]
    summary = json.loads((demo_run / "results/train/summary.json").read_text())
    assert summary["steps"] == steps
    assert (demo_run / "results/train/model/model_index.json").exists()
    assert (demo_run / "results/train/model/relightflow_model.json").exists()
    assert (demo_run / f"results/train/checkpoints/checkpoint-{steps}").is_dir()


def test_demo_model_relights(demo_run: Path) -> None:
    """The toy model learned (the random-weights demo model scored SSIM 0.04): mean SSIM near the issue's bar
    of 0.6 (this run gives 0.609; the margin allows for another CPU's float rounding over 400 steps), colour
    casts and dark inputs corrected better than doing nothing, on a test split big enough to mean something,
    and the instruction-agreement ceiling (the target row) at 1."""
    metrics = read_json(demo_run / "results/evaluate/metrics.json")
    model, target = metrics["metrics"]["model"], metrics["metrics"]["target"]
    assert model["n"] >= 20 and model["ssim"] >= 0.58, model
    kinds = metrics["by_degradation"]
    for kind, gain in (("color_cast", 0.5), ("low_key", 5.0)):
        assert kinds[kind]["model"]["n"] >= 5, kinds[kind]
        assert kinds[kind]["model"]["psnr"] > kinds[kind]["identity"]["psnr"] + gain, (kind, kinds[kind])
    assert target["direction_agreement"] >= 0.95 and target["temperature_agreement"] >= 0.95


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
