"""Real Snakemake runs of the ingest stage: DAG, outputs, and what a rerun redoes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import jobs_run, run_snakemake, snakemake_command

from relightflow.images import save_image
from relightflow.testing import render_scene

pytestmark = pytest.mark.slow


def _setup(workdir: Path, n_images: int = 7, **overrides) -> Path:
    images = workdir / "images"
    for i in range(n_images):
        save_image(images / f"img{i:02d}.jpg", render_scene(size=64, seed=i)[0])
    cfg = {"input": {"root": str(images)}, "shards": {"size": 3}, "stages": ["ingest"], **overrides}
    path = workdir / "test-config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ingest_dag_run_and_incremental_reruns(workdir: Path) -> None:
    cfg = _setup(workdir)
    dry = run_snakemake(workdir, "--configfile", str(cfg), "-n")
    assert jobs_run(dry) == {"ingest": 3, "ingest_summary": 1, "all": 1}

    run_snakemake(workdir, "--configfile", str(cfg))
    manifests = sorted((workdir / "results/ingest/manifests").glob("*.parquet"))
    assert [m.stem for m in manifests] == ["00000", "00001", "00002"]
    rows = pd.concat([pd.read_parquet(m) for m in manifests])
    assert len(rows) == 7 and set(rows.columns) >= {
        "image_id",
        "path",
        "width",
        "height",
        "format",
        "mode",
        "n_bytes",
    }
    assert len(pd.read_parquet(workdir / "results/ingest/rejects.parquet")) == 0

    again = run_snakemake(workdir, "--configfile", str(cfg), "-n")
    assert "Nothing to be done" in again.stdout + again.stderr

    # modify one image: only its shard's ingest (and the summary) rerun
    save_image(workdir / "images/img04.jpg", render_scene(size=64, seed=99, horizontal="right")[0])
    assert jobs_run(run_snakemake(workdir, "--configfile", str(cfg), "-n")) == {
        "ingest": 1, "ingest_summary": 1, "all": 1,
    }  # fmt: skip
    run_snakemake(workdir, "--configfile", str(cfg))
    before = {m.name: m.stat().st_mtime_ns for m in manifests}

    # add one image: it fills the last shard (00002 holds img06 only), nothing else moves
    save_image(workdir / "images/img00b.jpg", render_scene(size=64, seed=7)[0])
    run = run_snakemake(workdir, "--configfile", str(cfg))
    assert jobs_run(run) == {"ingest": 1, "ingest_summary": 1, "all": 1}
    after = {m.name: m.stat().st_mtime_ns for m in manifests}
    assert [n for n in before if before[n] != after[n]] == ["00002.parquet"]
    assert len(pd.read_parquet(workdir / "results/ingest/manifests/00002.parquet")) == 2

    # a touched image (same bytes, new mtime) only reruns its shard too
    os.utime(workdir / "images/img00.jpg")
    assert jobs_run(run_snakemake(workdir, "--configfile", str(cfg), "-n"))["ingest"] == 1

    # changing a rule parameter reruns that rule on every shard
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "ingest": {"min_side": 65}}))
    run = run_snakemake(workdir, "--configfile", str(cfg))
    assert jobs_run(run)["ingest"] == 3
    assert (
        pd.read_parquet(workdir / "results/ingest/rejects.parquet")["reason"]
        .str.startswith("too small")
        .all()
    )


def test_config_typo_fails_before_any_job(workdir: Path) -> None:
    cfg = _setup(workdir, n_images=1)
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "shards": {"sise": 3}}))
    proc = run_snakemake(workdir, "--configfile", str(cfg), "-n", check=False)
    assert proc.returncode != 0
    assert "sise" in proc.stdout + proc.stderr
    assert not (workdir / "results/ingest/manifests").exists()


def test_wrong_type_names_the_key(workdir: Path) -> None:
    cfg = _setup(workdir, n_images=1)
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "ingest": {"min_side": "big"}}))
    proc = run_snakemake(workdir, "--configfile", str(cfg), "-n", check=False)
    assert proc.returncode != 0 and "min_side" in proc.stdout + proc.stderr


def test_list_file_input(workdir: Path) -> None:
    cfg_path = _setup(workdir, n_images=4)
    (workdir / "list.txt").write_text("images/img00.jpg\nimages/img02.jpg\nimages/nope.jpg\n")
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["input"] = {"root": "unused", "list": str(workdir / "list.txt")}
    cfg_path.write_text(yaml.safe_dump(cfg))
    run_snakemake(workdir, "--configfile", str(cfg_path))
    kept = pd.read_parquet(workdir / "results/ingest/manifests/00000.parquet")
    assert sorted(kept["relpath"]) == ["images/img00.jpg", "images/img02.jpg"]
    rejects = pd.read_parquet(workdir / "results/ingest/rejects.parquet")
    assert list(rejects["reason"].str[:11]) == ["cannot stat"]


def _state(workdir: Path) -> dict[str, bytes]:
    state = workdir / "results/ingest/state"
    return {str(p.relative_to(state)): p.read_bytes() for p in state.rglob("*") if p.is_file()}


def test_unreadable_folder_stops_the_run_and_keeps_the_plan(workdir: Path) -> None:
    """A folder that cannot be listed (NFS hiccup, permissions) must not make its images leave their
    shards: the run stops naming the folder, and the shard state is left as it was."""
    cfg = _setup(workdir, n_images=4)
    (workdir / "images/sub").mkdir()
    save_image(workdir / "images/sub/extra.jpg", render_scene(size=64, seed=5)[0])
    run_snakemake(workdir, "--configfile", str(cfg), "-n")
    before = _state(workdir)
    (workdir / "images/sub").chmod(0)
    try:
        caps = "-dac_override,-dac_read_search"  # as root, drop the capability that ignores permissions
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"] if os.geteuid() == 0 else []
        proc = subprocess.run([*prefix, *snakemake_command(workdir, "--configfile", str(cfg), "-n")],
                              capture_output=True, text=True, cwd=workdir, timeout=300)  # fmt: skip
    finally:
        (workdir / "images/sub").chmod(0o755)
    assert proc.returncode != 0 and "cannot list input folder" in proc.stdout + proc.stderr
    assert "images/sub" in proc.stdout + proc.stderr
    assert _state(workdir) == before


def test_a_dry_run_during_a_real_run_changes_nothing_it_reads(workdir: Path) -> None:
    cfg = _setup(workdir, n_images=6)
    yaml_cfg = yaml.safe_load(cfg.read_text())
    cfg.write_text(yaml.safe_dump({**yaml_cfg, "stages": ["ingest", "filter"], "filter": {"backend": "stats", "min_side": 32}}))
    faults = str(Path(__file__).parent / "faults")
    env = {**os.environ, "PYTHONPATH": faults, "RELIGHTFLOW_FAULT": "slow-ingest:2"}
    real = subprocess.Popen(snakemake_command(workdir, "--configfile", str(cfg)), cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    locks = workdir / ".snakemake/locks"
    deadline = time.monotonic() + 300
    while not (locks.is_dir() and any(p.stat().st_size for p in locks.glob("*.lock"))):
        assert real.poll() is None and time.monotonic() < deadline, "the real run never started"
        time.sleep(0.2)
    before = _state(workdir)
    save_image(workdir / "images/img99.jpg", render_scene(size=64, seed=99)[0])  # new image mid-run
    dry = run_snakemake(workdir, "--configfile", str(cfg), "-n", check=False)
    assert "another Snakemake run holds this directory" in dry.stdout + dry.stderr
    assert _state(workdir) == before  # the running jobs' shard lists are untouched
    assert real.wait(timeout=600) == 0
    assert jobs_run(run_snakemake(workdir, "--configfile", str(cfg), "-n"))["ingest"] == 1  # picked up next run
