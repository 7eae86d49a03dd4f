"""Launch a training run: write the job file, hold GPU slots, train.

The Snakemake rule (and ``relightflow train``) call :func:`launch`. With ``train.gpus`` > 1 it runs
``accelerate launch`` (one process per GPU, DDP), each process running :func:`run_job`; with 0 or 1 GPU
it runs :func:`run_job` in its own process (no second interpreter to start). :func:`run_job` picks the
family's trainer from ``train.model`` (:data:`TRAINERS`). A rerun resumes from the newest checkpoint of
the same run in ``work_dir/checkpoints`` (:mod:`relightflow.train.checkpoints`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relightflow.manifest import write_json
from relightflow.train.config import TrainConfig, TrainPaths

log = logging.getLogger(__name__)


def write_job(path: str | os.PathLike, cfg: Mapping[str, Any], paths: TrainPaths) -> Path:
    """The job file: the raw ``train`` config (validated when read) and the run's folders."""
    TrainConfig(**cfg)  # fail here, in the launcher, on a bad setting
    write_json(path, {"config": dict(cfg), "paths": paths.model_dump()})
    return Path(path)


def read_job(path: str | os.PathLike) -> tuple[dict[str, Any], TrainPaths]:
    job = json.loads(Path(path).read_text(encoding="utf-8"))
    return job["config"], TrainPaths(**job["paths"])


TRAINERS = {
    "sd15": "relightflow.train.ip2p:IP2PTrainer",
    "sdxl": "relightflow.train.ip2p:IP2PTrainer",
    "flux-kontext": "relightflow.train.flux_kontext:FluxKontextTrainer",
}


def trainer_for(cfg: TrainConfig, paths: TrainPaths):
    """The family's trainer for ``cfg.model``."""
    import importlib

    module, _, name = TRAINERS[cfg.model].partition(":")
    return getattr(importlib.import_module(module), name)(cfg, paths)


def train(cfg: TrainConfig, paths: TrainPaths) -> Path:
    """Run (or resume) a training in this process; return the model folder."""
    return trainer_for(cfg, paths).train()


def run_job(job_path: str | os.PathLike) -> Path:
    """Train what the job file describes (called in every launched process)."""
    raw, paths = read_job(job_path)
    return train(TrainConfig(**raw), paths)


def accelerate_command(job: Path, gpus: int, mixed_precision: str, threads: int | None = None) -> list[str]:
    """``accelerate launch`` on ``gpus`` processes (``--cpu`` with one process when there is no GPU);
    ``threads`` (default: all cores) are shared among the processes."""
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    cmd = [exe] if exe else [sys.executable, "-m", "accelerate.commands.launch"]
    if exe:
        cmd.append("launch")
    if gpus <= 0:
        cmd += [
            "--cpu",
            "--num_processes",
            "1",
            "--mixed_precision",
            "no" if mixed_precision == "fp16" else mixed_precision,
        ]
    else:
        cmd += ["--num_processes", str(gpus), "--mixed_precision", mixed_precision]
        cmd += ["--multi_gpu"] if gpus > 1 else []
    per_process = max(1, (threads or os.cpu_count() or 1) // max(1, gpus))
    cmd += ["--num_cpu_threads_per_process", str(per_process)]
    cmd += ["--num_machines", "1", "--dynamo_backend", "no", "-m", "relightflow.train", "--job", str(job)]
    return cmd


def run_logged(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd``, relaying its output line by line to this module's logger (the rule's log)."""
    proc_log = logging.getLogger("relightflow.train.process")
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            proc_log.info(line.rstrip())
    return proc.returncode


def launch(
    cfg: Mapping[str, Any],
    train_data: str,
    output_dir: str,
    work_dir: str,
    val_data: str | None = None,
    latents: str | None = None,
    threads: int | None = None,
) -> Path:
    """Write the job, hold ``cfg['gpus']`` GPU slots and train; raise if training fails."""
    from relightflow.gpu_slots import gpu_slots

    paths = TrainPaths(
        train_data=train_data, output_dir=output_dir, work_dir=work_dir, val_data=val_data, latents=latents
    )
    job = write_job(Path(work_dir) / "job.json", cfg, paths)
    settings = TrainConfig(**cfg)
    with gpu_slots(settings.gpus) as devices:
        gpus = min(settings.gpus, len(devices))
        if gpus <= 1:
            if threads:
                import torch

                torch.set_num_threads(threads)
            return run_job(job)
        cmd = accelerate_command(job, gpus, settings.mixed_precision, threads)
        log.info("running %s", " ".join(cmd))
        returncode = run_logged(cmd, {**os.environ, "PYTHONUNBUFFERED": "1"})
    if returncode != 0:
        raise RuntimeError(f"training failed (exit {returncode}); see the log above")
    return Path(output_dir)
