"""The demo workflow end to end on the CPU, then `snakemake --report`, rendered in headless chromium.

Checks: the evaluation ran with its baselines; the report holds every stage's flagged results with
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
import pytest
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
