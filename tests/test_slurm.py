"""The workflow on a real single-node Slurm cluster (scripts/local-slurm.sh), through profiles/slurm.

The runs use a second partition made for these tests, `rf2cpu`: the node's 8 CPUs and 19284 MB cut to
2 CPUs and 4000 MB (MaxCPUsPerNode / MaxMemPerNode), deleted afterwards. No node size is exported: the
profile reads it from Slurm (relightflow.cluster). A reduced config (ingest + filter with the
image-statistics backend, 4 images in 2 shards, grouped) runs with `snakemake --profile profiles/slurm
--profile <overlay>`; every job is submitted by sbatch. The overlay only lowers the profile's memory for
the stats backend and injects one fault from the test side: `ingest_summary` gets 100 MB on its first
attempt, which Slurm's memory enforcement kills (the Snakemake process alone needs ~150 MB); the
profile's `retries` resubmit it with more memory. A run whose train job can never fit fails before
anything is submitted. Skipped where Slurm is not installed, unless RELIGHTFLOW_REQUIRE_SLURM is set
(CI installs it: scripts/local-slurm.sh up).
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
N_IMAGES, SHARD_SIZE, GROUP_COMPONENTS = 4, 2, 2
N_SHARDS = math.ceil(N_IMAGES / SHARD_SIZE)
# The GPU-tagged shard rule: score_lighting once the filter stage is part of the Snakefile.
FILTER_INCLUDED = "rules/filter.smk" in (REPO / "Snakefile").read_text()
GPU_RULE = "score_lighting" if FILTER_INCLUDED else "ingest"

PARTITION = "rf2cpu"
PARTITION_LIMITS = {"MaxCPUsPerNode": 2, "MaxMemPerNode": 4000}  # the node has 8 CPUs, 19284 MB, 2 GPUs
# Recorded on the local cluster with that partition (sinfo --noheader --Node --format=%P|%N|%c|%m|%G and
# scontrol show partition rf2cpu, shortened): replayed by fake sinfo/scontrol for the dry runs.
RECORDED = {
    "sinfo": f"debug*|vm|8|19284|gpu:fake:2\n{PARTITION}|vm|8|19284|gpu:fake:2\n",
    "scontrol": f"PartitionName={PARTITION} Default=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=1 "
    "MaxCPUsPerNode=2 Nodes=vm State=UP TotalCPUs=8 TotalNodes=1 DefMemPerNode=UNLIMITED MaxMemPerNode=4000\n",
}
NODE_SIZE_VARS = (
    "RELIGHTFLOW_SLURM_NODE_CPUS",
    "RELIGHTFLOW_SLURM_NODE_GPUS",
    "RELIGHTFLOW_SLURM_NODE_MEM_MB",
)

OVERLAY = {
    "slurm-init-seconds-before-status-checks": 1,
    "slurm-keep-successful-logs": True,
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
    if os.geteuid() != 0:
        return (
            "not root: cannot start the local cluster or add the test partition (scripts/local-slurm.sh up)"
        )
    return None


def _scontrol(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def slurm_cluster():
    """The local cluster, started (idempotently) for these tests and stopped if it was not running."""
    reason = _slurm_missing_reason()
    if reason:
        if os.environ.get("RELIGHTFLOW_REQUIRE_SLURM"):
            pytest.fail(f"RELIGHTFLOW_REQUIRE_SLURM is set but: {reason}")
        pytest.skip(reason)
    was_up = subprocess.run(["bash", LOCAL_SLURM, "status"], capture_output=True).returncode == 0
    up = subprocess.run(
        ["bash", LOCAL_SLURM, "up", "--no-install"], capture_output=True, text=True, timeout=120
    )
    assert up.returncode == 0, up.stderr
    yield
    if not was_up:
        subprocess.run(["bash", LOCAL_SLURM, "down"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def small_partition(slurm_cluster):
    """A 2-CPU / 4000 MB partition on the test node, removed afterwards (slurm.conf is not touched)."""
    _scontrol("delete", f"PartitionName={PARTITION}")  # left over by an interrupted run
    limits = [f"{key}={value}" for key, value in PARTITION_LIMITS.items()]
    made = _scontrol("create", f"PartitionName={PARTITION}", "Nodes=ALL", "State=UP", *limits)
    assert made.returncode == 0, made.stderr
    try:
        yield PARTITION
    finally:
        _scontrol("delete", f"PartitionName={PARTITION}")


def _workdir(tmp_path: Path, overlay: dict = OVERLAY, **config) -> tuple[Path, Path, Path]:
    work = tmp_path / "work"
    for i in range(N_IMAGES):
        save_image(work / "images" / f"img{i:02d}.jpg", render_scene(size=64, seed=i)[0])
    cfg = {
        "input": {"root": str(work / "images")},
        "shards": {"size": SHARD_SIZE},
        "stages": ["ingest", "filter"],
        "filter": {"backend": "stats", "min_side": 32},
        "ingest": {"min_side": 32},
        **config,
    }
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    overlay_dir = tmp_path / "overlay"
    overlay_dir.mkdir()
    (overlay_dir / "config.yaml").write_text(yaml.safe_dump(overlay))
    return work, work / "config.yaml", overlay_dir


def _env(partition: str, **extra: str) -> dict[str, str]:
    """The test's environment with RELIGHTFLOW_SLURM_PARTITION set and no node size exported."""
    env = {k: v for k, v in os.environ.items() if k not in NODE_SIZE_VARS}
    return {**env, "RELIGHTFLOW_SLURM_PARTITION": partition, **extra}


def _snakemake(
    work: Path, cfg: Path, *profiles: Path, args=(), env: dict[str, str] | None = None, timeout=600
) -> subprocess.CompletedProcess:
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
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, cwd=work, env=env)


def _fake_slurm(bin_dir: Path, calls: Path) -> None:
    """sinfo / scontrol that replay RECORDED and log each call to ``calls`` (other scontrol calls: no output)."""
    bin_dir.mkdir()
    answers = {"sinfo": "sinfo --noheader --Node ", "scontrol": f"scontrol show partition {PARTITION}"}
    for name, output in RECORDED.items():
        (bin_dir / f"{name}.out").write_text(output)
        script = bin_dir / name
        script.write_text(
            f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n'
            f'case "{name} $*" in "{answers[name]}"*) cat "{bin_dir / name}.out";; esac\n'
        )
        script.chmod(0o755)


def _sbatch_calls(text: str) -> list[dict]:
    """Each `sbatch call:` line of a verbose run: target jobs, attempt, partition, CPUs, memory, GPUs, logs."""
    calls = []
    for line in text.splitlines():
        if not line.startswith("sbatch call:"):
            continue
        targets = re.search(r"--target-jobs (.*?) --", line).group(1)
        calls.append(
            {
                "jobs": re.findall(r"'(\w+):(?:shard=)?(\w*)'", targets),
                "attempt": int(re.search(r"--attempt (\d+)", line).group(1)),
                "partition": re.search(r" -p (\S+)", line).group(1),
                "cpus": int(re.search(r" --cpus-per-task=(\d+)", line).group(1)),
                "mem": int(re.search(r" --mem (\d+)", line).group(1)),
                "gpus": re.search(r" --gpus=(\S+)", line),
                "logdir": re.search(r"--output (\S+)/%j\.log", line).group(1),
            }
        )
    return calls


def _slurm_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def _threads(text: str, rule: str) -> set[int]:
    """The `threads:` a dry run prints for each job of ``rule``."""
    blocks = re.findall(rf"rule {rule}:\n(.*?)\n\n", text, flags=re.S)
    return {int(m.group(1)) for b in blocks if (m := re.search(r"threads: (\d+)", b))}


def test_profile_sizes_jobs_from_one_sinfo(tmp_path: Path) -> None:
    """No cluster needed (Slurm replayed): one sinfo + one scontrol per run, threads cut to the partition's
    2 CPUs, shard jobs bundled into ceil(shards / 10) groups; exported sizes win and Slurm is not asked."""
    work, cfg, _ = _workdir(tmp_path)
    calls = tmp_path / "calls.log"
    _fake_slurm(tmp_path / "bin", calls)
    env = _env(PARTITION, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    proc = _snakemake(work, cfg, REPO / "profiles/slurm", args=["-n"], env=env, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    asked = [c for c in calls.read_text().splitlines() if c.startswith(("sinfo", "scontrol show partition"))]
    assert asked == [  # (the Slurm plugin itself reads `scontrol show config` once)
        "sinfo --noheader --Node --format=%P|%N|%c|%m|%G",
        f"scontrol show partition {PARTITION}",
    ]
    assert _threads(text, GPU_RULE) == {2}  # the stats backend asks for 3 threads (num_workers + 1)
    assert text.count("Group job shard") == 1  # 2 shards <= group-components 10: one Slurm job

    calls.unlink()
    sizes = dict(zip(NODE_SIZE_VARS, ("3", "1", "4000"), strict=True))  # 3 CPUs, not the partition's 2
    args = ["-n", "--group-components", "shard=1"]
    proc = _snakemake(work, cfg, REPO / "profiles/slurm", args=args, env={**env, **sizes})
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    asked = [c for c in calls.read_text().splitlines() if c.startswith(("sinfo", "scontrol show partition"))]
    assert asked == [], "every size exported: Slurm is not asked"
    assert _threads(text, GPU_RULE) == {3}
    assert text.count("Group job shard") == N_SHARDS, "one group per shard, none duplicated"


@pytest.mark.slow
@pytest.mark.slurm
def test_workflow_runs_through_slurm_on_a_2_cpu_partition(small_partition: str, tmp_path: Path) -> None:
    work, cfg, overlay = _workdir(tmp_path)
    proc = _snakemake(
        work, cfg, REPO / "profiles/slurm", overlay, args=["--verbose"], env=_env(small_partition)
    )
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

    # every submission fits one node of the partition, none left pending
    assert {c["partition"] for c in calls} == {small_partition}
    assert max(c["cpus"] for c in calls) == PARTITION_LIMITS["MaxCPUsPerNode"]
    assert max(c["mem"] for c in calls) <= PARTITION_LIMITS["MaxMemPerNode"]

    # shard jobs bundled: ceil(2 / 2) group submissions, each shard in exactly one of them
    groups = [c for c in calls if any(rule == GPU_RULE for rule, _ in c["jobs"])]
    assert len(groups) == math.ceil(N_SHARDS / GROUP_COMPONENTS)
    shards = sorted(shard for c in groups for rule, shard in c["jobs"] if rule == GPU_RULE)
    assert shards == [f"{i:05d}" for i in range(N_SHARDS)]
    # inside a group on 2 CPUs: the two 1-thread ingest jobs side by side (2 x 2000 MB), then the GPU jobs
    # (cut to 2 threads each) one after the other on one GPU
    if FILTER_INCLUDED:
        assert [(c["cpus"], c["mem"], c["gpus"].group(1)) for c in groups] == [(2, 4000, "1")]

    # the GPU rule asked Slurm for a GPU, and Slurm gave each allocation its own device
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
    again = _snakemake(work, cfg, REPO / "profiles/slurm", overlay, args=["-n"], env=_env(small_partition))
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
@pytest.mark.slurm
def test_job_that_cannot_fit_fails_before_submission(small_partition: str, tmp_path: Path) -> None:
    """train.mem_mb / train.gpus above the partition's node: the run stops naming the rule and the resource,
    and submits nothing (before, Slurm accepted such a job and it pended forever)."""
    stages = ["ingest", "filter", "pairs", "captions", "dataset", "train"]
    work, cfg, overlay = _workdir(tmp_path, stages=stages, train={"mem_mb": 64000, "gpus": 4})
    proc = _snakemake(
        work, cfg, REPO / "profiles/slurm", overlay, args=["--verbose"], env=_env(small_partition)
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"rule train asks for mem_mb=64000 but partition {small_partition} allows 4000 MB per node" in text
    assert f"rule train asks for gpu=4 but partition {small_partition}'s nodes have 2 GPUs" in text
    assert "sbatch call" not in text and not (work / "results/logs/slurm").exists(), "nothing submitted"
