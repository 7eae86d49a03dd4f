"""End to end: the demo images through every stage, then the tiny SD1.5 model trained a few dozen steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_snakemake

from relightflow.train.tiny import save_tiny_pipeline

DEMO_TRAIN = {
    "model": "sd15", "resolution": 64, "batch_size": 4, "gradient_accumulation_steps": 1, "max_steps": 24,
    "learning_rate": 1.0e-3, "lr_warmup_steps": 2, "mixed_precision": "no", "gradient_checkpointing": False,
    "checkpointing_steps": 12, "checkpoints_total_limit": 1, "validation_steps": 24, "num_validation_images": 2,
    "validation_inference_steps": 2, "gpus": 0,
}  # fmt: skip


@pytest.mark.slow
def test_demo_trains_the_tiny_model(workdir: Path) -> None:
    if "rules/train.smk" not in (REPO / "Snakefile").read_text():
        pytest.skip("the Snakefile does not include rules/train.smk yet")
    base = save_tiny_pipeline(workdir / "tiny-sd15", "sd15", 64, instruct=False)
    demo = yaml.safe_load((REPO / "profiles" / "demo" / "demo.yaml").read_text())
    demo["input"]["root"] = str(workdir / "images")
    offline = {
        "filter": {"backend": "stats"},
        "pairs": {"segmenter": "classical"},
        "captions": {"provider": "measured"},
    }
    for section, settings in offline.items():  # what the demo profile already sets; explicit here
        demo[section] = {**settings, **demo.get(section, {})}
    demo["dataset"] = {**demo.get("dataset", {}), "resolution": 64}
    demo["train"] = {**demo.get("train", {}), **DEMO_TRAIN, "pretrained": str(base)}
    demo["stages"] = ["ingest", "filter", "pairs", "captions", "dataset", "train"]
    (workdir / "demo.yaml").write_text(yaml.safe_dump(demo))
    run_snakemake(workdir, "--configfile", str(workdir / "demo.yaml"))  # rule all: stages up to train

    summary = json.loads((workdir / "results" / "train" / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["loss_last"] < summary["loss_first"]
    assert (workdir / "results" / "train" / "model" / "model_index.json").exists()
    assert (workdir / "results" / "train" / "checkpoints" / "checkpoint-24").is_dir()
