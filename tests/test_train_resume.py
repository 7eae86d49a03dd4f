"""A training process killed after a checkpoint resumes from it when rerun through ``accelerate launch``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relightflow.logs import logged
from relightflow.testing.tiny_sd import export_fixture_split, overfit_config, save_tiny_pipeline
from relightflow.train.config import TrainPaths
from relightflow.train.ip2p import checkpoints
from relightflow.train.launch import launch, write_job

RES = 64


def _wait_for_checkpoint(folder: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not checkpoints(folder):
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint appeared")
        time.sleep(0.2)


@pytest.mark.slow  # two fresh processes (the killed one and `accelerate launch`)
def test_kill_after_checkpoint_then_resume(tmp_path: Path) -> None:
    data = export_fixture_split(tmp_path, n_images=4, resolution=RES)
    base = save_tiny_pipeline(tmp_path / "base", "sd15", RES, instruct=False)
    work, out = tmp_path / "work", tmp_path / "model"
    cfg = overfit_config(base, "sd15", RES, max_steps=500, checkpointing_steps=2, checkpoints_total_limit=2,
                         num_validation_images=0).model_dump()  # fmt: skip
    paths = TrainPaths(train_data=str(data), output_dir=str(out), work_dir=str(work))
    job = write_job(work / "job.json", cfg, paths)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "relightflow.train", "--job", str(job)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    _wait_for_checkpoint(work / "checkpoints", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = checkpoints(work / "checkpoints")[-1][0]
    assert not out.exists() and resumed_from < 500

    log = tmp_path / "train.log"
    with logged(log):  # what the rule's adapter does
        launch({**cfg, "max_steps": resumed_from + 3, "gpus": 0}, str(data), str(out), str(work))
    text = log.read_text()
    assert f"(step {resumed_from})" in text and "resumed from" in text, text[-3000:]
    steps = [json.loads(line)["step"] for line in (work / "loss.jsonl").read_text().splitlines()]
    assert steps == list(range(1, resumed_from + 4))  # every step once: the killed run's tail was dropped
    assert (out / "model_index.json").exists()
    assert checkpoints(work / "checkpoints")[-1][0] == resumed_from + 3


def test_accelerate_command_follows_the_gpu_count(tmp_path: Path) -> None:
    from relightflow.train.launch import accelerate_command

    cpu = accelerate_command(tmp_path / "job.json", 0, "fp16")
    assert "--cpu" in cpu and cpu[cpu.index("--num_processes") + 1] == "1"
    assert cpu[cpu.index("--mixed_precision") + 1] == "no"  # no fp16 autocast on a CPU
    multi = accelerate_command(tmp_path / "job.json", 4, "bf16")
    assert (
        "--multi_gpu" in multi and multi[multi.index("--num_processes") + 1] == "4" and "--cpu" not in multi
    )
    assert multi[-4:] == ["-m", "relightflow.train", "--job", str(tmp_path / "job.json")]
