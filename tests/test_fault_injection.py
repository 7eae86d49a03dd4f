"""Faults through real Snakemake runs: an environment failure (a GPU out of memory in the segmenter) fails
the job instead of becoming rejects, and the rerun completes; a kill -9 in the middle of a shard leaves no
half-written output, and the rerun completes. The faults are injected by tests/faults/sitecustomize.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_snakemake, snakemake_command

from relightflow.images import save_image
from relightflow.manifest import read_json, read_table
from relightflow.testing import Scene, render_scene

pytestmark = pytest.mark.slow
FAULTS = Path(__file__).parent / "faults"


def _setup(workdir: Path, n_images: int = 6) -> Path:
    for i in range(n_images):
        scene = Scene(horizontal=("left", "right")[i % 2], size=96, seed=i)
        save_image(workdir / "images" / f"img{i}.png", render_scene(scene)[0])
    cfg = {"input": {"root": str(workdir / "images")}, "shards": {"size": 3}, "stages": ["ingest", "filter", "pairs"],
           "filter": {"backend": "stats", "min_side": 32, "dedup": {"phash_distance": None}},
           "pairs": {"segmenter": "classical", "max_side": 96, "threads": 1}}  # fmt: skip
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(fault: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(FAULTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "RELIGHTFLOW_FAULT": fault}


def test_out_of_memory_fails_the_job_and_the_rerun_completes(workdir: Path) -> None:
    cfg = _setup(workdir)
    env = _env(f"segment-oom:{workdir / 'oom-once'}")
    first = run_snakemake(workdir, "--configfile", str(cfg), env=env, check=False)
    assert first.returncode != 0
    res = workdir / "results/pairs"
    failed = [s for s in ("00000", "00001") if not (res / "segments" / f"{s}.parquet").exists()]
    assert len(failed) == 1  # the job failed: no table, no reject rows for its images
    assert not (res / "rejects/segment" / f"{failed[0]}.parquet").exists()
    log = (workdir / "results/logs/pairs/segment" / f"{failed[0]}.log").read_text()
    assert "OutOfMemoryError" in log and "segment failed on image" in log  # the log names the image

    run_snakemake(workdir, "--configfile", str(cfg), env=env)
    for shard in ("00000", "00001"):
        stats = read_json(res / "stats/segment" / f"{shard}.json")
        assert stats["n_in"] == stats["n_kept"] == 3
    assert len(read_table(res / "rejects.parquet")) == 0


def test_kill_9_mid_shard_leaves_no_partial_output(workdir: Path) -> None:
    cfg = _setup(workdir)
    cmd = snakemake_command(workdir, "--configfile", str(cfg))
    proc = subprocess.Popen(cmd, cwd=workdir, env=_env("slow-degrade:1.5"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    images = workdir / "results/pairs/images"
    deadline = time.monotonic() + 300
    while not any(images.glob("*/*_target.png")):  # a degrade job is half-way through its shard
        assert proc.poll() is None and time.monotonic() < deadline, "degrade never started"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    results = workdir / "results"
    outputs = [p for p in results.rglob("*") if p.is_file() and not p.name.startswith(".")]  # temps are hidden
    for path in outputs:  # every output that exists is whole
        if path.suffix == ".parquet":
            pq.read_table(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
    assert not list((results / "pairs/manifests").glob("*.parquet"))  # the killed shard wrote no table

    run_snakemake(workdir, "--unlock", "--configfile", str(cfg))
    run_snakemake(workdir, "--configfile", str(cfg), "--rerun-incomplete")
    summary = read_json(results / "pairs/stats.json")["stages"]["degrade"]
    assert summary["n_in"] == summary["n_kept"] == 6 and summary["n_rows"] == 6
