"""The CI config matrix (.test/*.yaml): the whole workflow with the real-model backends, each on a tiny
random model loaded through the same code as a real checkpoint (the demo profile is the other entry)."""

from __future__ import annotations

from pathlib import Path

import pytest
from chat_server import DEFAULT_DESCRIPTION
from conftest import REPO, run_snakemake

from relightflow.images import save_image
from relightflow.manifest import read_json
from relightflow.testing import Scene, render_scene
from relightflow.testing.tiny_clip import save_tiny_clip
from relightflow.testing.tiny_sam import build_tiny_sam2_checkpoint
from relightflow.testing.tiny_sd import save_tiny_pipeline
from relightflow.testing.tiny_vlm import build_tiny_qwen3vl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _models(models: Path) -> None:
    save_tiny_clip(models, "tiny-clip")
    build_tiny_sam2_checkpoint(models / "tiny-sam2.pt")
    build_tiny_qwen3vl(models / "tiny-qwen3vl", reply=DEFAULT_DESCRIPTION)
    save_tiny_pipeline(models / "tiny-sdxl", kind="sdxl", resolution=32, instruct=False)


def test_real_backends_on_tiny_models(workdir: Path) -> None:
    _models(workdir / "models")
    for i in range(8):
        scene = Scene(horizontal=("left", "right")[i % 2], color_temperature=("warm", "cool")[i // 4], size=96, seed=i)
        save_image(workdir / "images" / f"img{i}.png", render_scene(scene)[0])
    run_snakemake(workdir, "--configfile", str(REPO / ".test/real-backends.yaml"), timeout=2400)
    res = workdir / "results"
    scores = read_json(res / "filter/stats/00000.json")
    assert scores["info"]["backend"] == "clip" and scores["n_kept"] == 4
    assert read_json(res / "pairs/stats.json")["stages"]["segment"]["info"]["segmenter"] == "sam2"
    captions = read_json(res / "captions/stats.json")
    assert captions["info"]["provider"] == "transformers" and captions["n_kept"] > 0
    summary = read_json(res / "train/summary.json")
    assert summary["model"] == "sdxl" and summary["steps"] == 4
    metrics = read_json(res / "evaluate/metrics.json")
    assert {"model", "identity", "target"} <= set(metrics["metrics"])
