"""Training through Snakemake: reruns resume only the same run; Flux Kontext trains and evaluates; the demo.

The train (and evaluate) rules run on pre-exported fixture splits (``--allowed-rules`` keeps Snakemake
from rebuilding them upstream), with tiny random models, so each workflow run takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_snakemake, snakemake_command

from relightflow.images import save_image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]
RES = 16


def _fixture_workdir(root: Path, splits: dict[str, int]) -> Path:
    """A Snakemake working directory whose exported splits already exist (``{split: n_images}``)."""
    import numpy as np

    work = root / "work"
    save_image(
        work / "images" / "a.png", np.full((RES, RES, 3), 128, np.uint8)
    )  # the input the Snakefile lists
    for split, n in splits.items():
        export(work, split, n)
    return work


def export(work: Path, split: str, n_images: int) -> None:
    """(Re-)export ``results/dataset/<split>`` with ``n_images`` rendered triplets, like the dataset rule."""
    from relightflow.dataset import export_split
    from relightflow.testing.tiny_sd import write_triplet_fixture

    up = write_triplet_fixture(work / "upstream" / split, n_images=n_images, size=RES, splits=(split,))
    export_split(
        split,
        up["selection"],
        up["pairs"],
        up["captions"],
        work / "results/dataset" / split,
        work / "upstream/stats.json",
        work / "upstream/rejects.parquet",
        {"resolution": RES},
    )


def write_config(work: Path, train: dict, **extra) -> list[str]:
    """The test's config file (over the repository's config.yaml); returns the Snakemake arguments."""
    splits = {"train": 1.0, "val": 0, "test": 0.0}
    cfg = {
        "input": {"root": str(work / "images")},
        "stages": ["train"],
        "filter": {"splits": splits},
        "train": {
            "resolution": RES,
            "batch_size": 2,
            "gradient_accumulation_steps": 1,
            "learning_rate": 1e-3,
            "lr_scheduler": "constant",
            "lr_warmup_steps": 0,
            "mixed_precision": "no",
            "gradient_checkpointing": False,
            "use_ema": False,
            "checkpointing_steps": 4,
            "checkpoints_total_limit": 2,
            "validation_steps": 1000,
            "num_validation_images": 1,
            "validation_loss_samples": 2,
            "validation_inference_steps": 2,
            "report_to": "none",
            "gpus": 0,
            "threads": 1,
            **train,
        },
        **extra,
    }
    (work / "test.yaml").write_text(yaml.safe_dump(cfg))
    return [
        "--configfile",
        str(work / "test.yaml"),
        "--allowed-rules",
        "all",
        "train",
        "evaluate",
        "--nolock",
    ]


def summary(work: Path) -> dict:
    return json.loads((work / "results/train/summary.json").read_text())


def train_log(work: Path) -> str:
    return (work / "results/logs/train/train.log").read_text()


def loss_steps(work: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (work / "results/train/loss.jsonl").read_text().splitlines()]


def unet_bytes(work: Path) -> bytes:
    return (work / "results/train/model/unet/diffusion_pytorch_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def sd_work(tmp_path_factory) -> Path:
    from relightflow.testing.tiny_sd import save_tiny_pipeline

    work = _fixture_workdir(tmp_path_factory.mktemp("train_reruns"), {"train": 4})
    save_tiny_pipeline(work / "base", "sd15", RES, instruct=False)
    return work


def test_reruns_resume_only_the_same_run(sd_work: Path) -> None:
    """Changed learning rate or data: from step 0 (stale checkpoints deleted); raised max_steps: resumed;
    killed with SIGKILL mid-run: the rerun resumes from its last checkpoint and finishes."""
    work, base = sd_work, {"model": "sd15", "pretrained": str(sd_work / "base"), "max_steps": 4}
    run_snakemake(work, *write_config(work, base))
    first = unet_bytes(work)
    assert summary(work)["steps"] == 4 and summary(work)["resumed_from"] is None

    run_snakemake(work, *write_config(work, {**base, "learning_rate": 5e-4}))
    text = train_log(work)
    assert "deleting stale checkpoint-4: settings changed: learning_rate 0.001 -> 0.0005" in text, text[
        -3000:
    ]
    assert "training sd15 from step 0 to 4" in text and summary(work)["resumed_from"] is None
    assert unet_bytes(work) != first  # a new model, not the old weights saved again

    export(work, "train", 5)  # one image added to the training data
    run_snakemake(work, *write_config(work, {**base, "learning_rate": 5e-4}))
    text = train_log(work)
    assert "deleting stale checkpoint-4: training data changed" in text and "from step 0 to 4" in text
    assert summary(work)["train_examples"] == 5

    args = write_config(work, {**base, "learning_rate": 5e-4, "max_steps": 16, "checkpointing_steps": 2})
    killed_at = kill_after_checkpoint(work, args, after=6)
    text = train_log(work)
    assert "resumed from" in text and "(step 4)" in text and "from step 4 to 16" in text  # max_steps raised
    run_snakemake(work, *args, "--rerun-incomplete")
    text = train_log(work)
    assert f"(step {killed_at})" in text and f"from step {killed_at} to 16" in text, text[-3000:]
    assert summary(work)["steps"] == 16 and summary(work)["resumed_from"] == killed_at
    assert loss_steps(work) == list(range(1, 17))  # each step once: the killed run's tail was dropped


def kill_after_checkpoint(work: Path, args: list[str], after: int, timeout: float = 300) -> int:
    """Start the workflow, SIGKILL its whole process group once a checkpoint past ``after`` exists."""
    from relightflow.train.checkpoints import checkpoints

    folder = work / "results/train/checkpoints"
    proc = subprocess.Popen(
        snakemake_command(work, *args),
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while not [s for s, _ in checkpoints(folder) if s >= after]:
        assert proc.poll() is None, f"the workflow ended ({proc.returncode}) before a checkpoint past {after}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    step = checkpoints(folder)[-1][0]
    assert not (work / "results/train/summary.json").exists(), "the run finished before it was killed"
    return step


def test_flux_kontext_trains_and_evaluates_through_the_workflow(tmp_path: Path) -> None:
    """``train.model: flux-kontext``: the train rule writes the same outputs as SD; evaluate runs the LoRA
    with the guidance it was trained with."""
    from relightflow.testing.tiny_flux import save_tiny_flux_kontext

    work = _fixture_workdir(tmp_path, {"train": 4, "test": 2})
    base = save_tiny_flux_kontext(work / "kontext")
    train = {
        "model": "flux-kontext",
        "pretrained": str(base),
        "max_steps": 3,
        "lora_rank": 4,
        "flux": {
            "max_sequence_length": 16,
            "validation_inference_steps": 2,
            "dataloader_num_workers": 0,
            "guidance_scale": 3.0,
        },
    }
    evaluate = {"num_inference_steps": 2, "batch_size": 2, "grid_rows": 2}
    args = write_config(work, train, evaluate=evaluate)
    run_snakemake(work, *args, "results/evaluate/metrics.json", "results/train/loss_curve.png")
    s = summary(work)
    assert s["model"] == "flux-kontext" and s["steps"] == 3 and len(s["val_losses"]) == 2
    model = work / "results/train/model"
    assert {"pytorch_lora_weights.safetensors", "relightflow_model.json", "README.md"} <= {
        p.name for p in model.iterdir()
    }
    assert (work / "results/train/loss_curve.png").stat().st_size > 1000
    assert (work / "results/train/validation/step-0000003.png").exists()
    metrics = json.loads((work / "results/evaluate/metrics.json").read_text())
    assert metrics["n_images"] == 2 and set(metrics["systems"]) == {"model", "identity", "target"}
    assert metrics["params"]["guidance_scale"] == 3.0 and metrics["params"]["num_inference_steps"] == 2
    assert metrics["params"]["resolution"] == RES  # the trained model's, not a config default
