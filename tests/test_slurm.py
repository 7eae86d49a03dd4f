"""The workflow on a real single-node Slurm cluster (scripts/local-slurm.sh), through profiles/slurm.

A reduced config (ingest + filter with the image-statistics backend, 5 images in 3 shards) runs with
`snakemake --profile profiles/slurm --profile <overlay>`; every job is submitted by sbatch. The overlay
only shrinks the profile for a 2-CPU test node and injects one fault from the test side: `ingest_summary`
gets 100 MB on its first attempt, which Slurm's memory enforcement kills (the Snakemake process alone
needs ~150 MB); the profile's `retries` resubmit it with more memory. Skipped where Slurm is not
installed, unless RELIGHTFLOW_REQUIRE_SLURM is set (CI installs it: scripts/local-slurm.sh up).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, SNAKEMAKE

from relightflow.images import save_image
from relightflow.testing import render_scene

LOCAL_SLURM = REPO / "scripts/local-slurm.sh"
N_IMAGES, SHARD_SIZE, GROUP_COMPONENTS = 5, 2, 2
N_SHARDS = math.ceil(N_IMAGES / SHARD_SIZE)
# The GPU-tagged shard rule: score_lighting once the filter stage is part of the Snakefile.
FILTER_INCLUDED = "rules/filter.smk" in (REPO / "Snakefile").read_text()
GPU_RULE = "score_lighting" if FILTER_INCLUDED else "ingest"

OVERLAY = {
    "slurm-init-seconds-before-status-checks": 2,
    "slurm-keep-successful-logs": True,
    "cores": 8,  # the test node (scripts/local-slurm.sh): 8 CPUs, 2 fake GPUs; a group takes 1 GPU
    "resources": {"gpu": 1, "mem_mb": 8000},
    "group-components": {"shard": GROUP_COMPONENTS},
    "set-resources": {
        "ingest_summary": {"mem_mb": "100 if attempt == 1 else 1000 * attempt"},
        GPU_RULE: {"gpu": 1, "mem_mb": 1000},  # the stats backend declares no GPU; clip would
    },
}


def _slurm_missing_reason() -> str | None:
    if not shutil.which("sinfo") or not LOCAL_SLURM.exists():
        return (
            "Slurm is not installed (Debian: bash scripts/local-slurm.sh up installs slurmctld/slurmd/munge)"
        )
    if os.geteuid() != 0 and subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        return "no Slurm controller reachable and not root to start one (scripts/local-slurm.sh up)"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    """The local cluster, started (idempotently) for these tests and stopped if it was not running."""
    reason = _slurm_missing_reason()
    if reason:
        if os.environ.get("RELIGHTFLOW_REQUIRE_SLURM"):
            pytest.fail(f"RELIGHTFLOW_REQUIRE_SLURM is set but: {reason}")
        pytest.skip(reason)
    was_up = subprocess.run(["bash", LOCAL_SLURM, "status"], capture_output=True).returncode == 0
    if os.geteuid() == 0:
        up = subprocess.run(
            ["bash", LOCAL_SLURM, "up", "--no-install"], capture_output=True, text=True, timeout=120
        )
        assert up.returncode == 0, up.stderr
    yield
    if not was_up and os.geteuid() == 0:
        subprocess.run(["bash", LOCAL_SLURM, "down"], capture_output=True, timeout=120)


def _workdir(tmp_path: Path) -> tuple[Path, Path, Path]:
    work = tmp_path / "work"
    for i in range(N_IMAGES):
        save_image(work / "images" / f"img{i:02d}.jpg", render_scene(size=64, seed=i)[0])
    cfg = {
        "input": {"root": str(work / "images")},
        "shards": {"size": SHARD_SIZE},
        "stages": ["ingest", "filter"],
        "filter": {"backend": "stats", "min_side": 32},
        "ingest": {"min_side": 32},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "config.yaml").write_text(yaml.safe_dump(OVERLAY))
    return work, work / "config.yaml", overlay


def _snakemake(work: Path, cfg: Path, *profiles: Path, args=(), timeout=600) -> subprocess.CompletedProcess:
    cmd = [
        SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(cfg),
    ]
    for profile in profiles:
        cmd += ["--profile", str(profile)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, cwd=work)


def _sbatch_calls(text: str) -> list[dict]:
    """Each `sbatch call:` line of a verbose run: target jobs, attempt, memory, GPUs, Slurm log folder."""
    calls = []
    for line in text.splitlines():
        if not line.startswith("sbatch call:"):
            continue
        targets = re.search(r"--target-jobs (.*?) --", line).group(1)
        calls.append(
            {
                "jobs": re.findall(r"'(\w+):(?:shard=)?(\w*)'", targets),
                "attempt": int(re.search(r"--attempt (\d+)", line).group(1)),
                "mem": int(re.search(r" --mem (\d+)", line).group(1)),
                "gpus": re.search(r" --gpus=(\S+)", line),
                "logdir": re.search(r"--output (\S+)/%j\.log", line).group(1),
            }
        )
    return calls


def _slurm_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def test_profile_dry_run_groups_shard_jobs(tmp_path: Path) -> None:
    """No cluster needed: the profile parses and bundles the shard jobs into ceil(shards / 10) groups."""
    work, cfg, _ = _workdir(tmp_path)
    proc = _snakemake(work, cfg, REPO / "profiles/slurm", args=["-n"], timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert text.count("Group job shard") == 1  # 3 shards <= group-components 10: one Slurm job
    proc = _snakemake(work, cfg, REPO / "profiles/slurm", args=["-n", "--group-components", "shard=1"])
    text = proc.stdout + proc.stderr
    assert text.count("Group job shard") == N_SHARDS, "one group per shard, none duplicated"


@pytest.mark.slow
@pytest.mark.slurm
def test_workflow_runs_through_slurm(slurm_cluster, tmp_path: Path) -> None:
    work, cfg, overlay = _workdir(tmp_path)
    proc = _snakemake(work, cfg, REPO / "profiles/slurm", overlay, args=["--verbose"])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]

    # outputs of both stages, every image accounted for
    manifests = sorted((work / "results/ingest/manifests").glob("*.parquet"))
    assert len(manifests) == N_SHARDS
    assert sum(len(pd.read_parquet(m)) for m in manifests) == N_IMAGES
    if FILTER_INCLUDED:
        assert len(pd.read_parquet(work / "results/filter/selection.parquet")) > 0

    calls = _sbatch_calls(text)
    submitted = {rule for call in calls for rule, _ in call["jobs"]}
    expected = {"ingest", "ingest_summary"} | ({"score_lighting", "select"} if FILTER_INCLUDED else set())
    assert submitted == expected, "every job except the local `all` went through sbatch"

    # shard jobs bundled: ceil(3 / 2) group submissions, each shard in exactly one of them
    groups = [c for c in calls if any(rule == GPU_RULE for rule, _ in c["jobs"])]
    assert len(groups) == math.ceil(N_SHARDS / GROUP_COMPONENTS)
    shards = sorted(shard for c in groups for rule, shard in c["jobs"] if rule == GPU_RULE)
    assert shards == [f"{i:05d}" for i in range(N_SHARDS)]

    # the GPU rule asked Slurm for a GPU, and Slurm gave each allocation its own device
    assert all(c["gpus"] and c["gpus"].group(1) == "1" for c in groups)
    logs = sorted({log for c in groups for log in Path(c["logdir"]).glob("*.log")})
    assert len(logs) == len(groups)
    for log in logs:
        job = _slurm_job(log.stem)
        assert job.get("TresPerJob") == "gres:gpu:1", job
        assert job.get("JobState") == "COMPLETED", job
        body = log.read_text()
        assert re.search(rf"srun .*--gpus=1 .*'{GPU_RULE}:shard=", body), "each GPU job step asked for a GPU"
        assert re.search(r"'CUDA_VISIBLE_DEVICES': '\d'", body), "Slurm set CUDA_VISIBLE_DEVICES"

    # the fault: attempt 1 killed by Slurm for memory, resubmitted with more memory, then succeeded
    summary = [c for c in calls if c["jobs"] == [("ingest_summary", "")]]
    assert [(c["attempt"], c["mem"]) for c in summary] == [(1, 100), (2, 2000)]
    failed_log, ok_log = sorted(Path(summary[0]["logdir"]).glob("*.log"), key=lambda p: int(p.stem))
    assert "exceeded memory limit" in failed_log.read_text()
    assert _slurm_job(failed_log.stem).get("JobState") in {"FAILED", "OUT_OF_MEMORY", "CANCELLED"}
    assert _slurm_job(ok_log.stem).get("JobState") == "COMPLETED"
    assert (work / "results/ingest/stats.json").exists()

    # a second run has nothing to submit
    again = _snakemake(work, cfg, REPO / "profiles/slurm", overlay, args=["-n"])
    assert "Nothing to be done" in again.stdout + again.stderr
