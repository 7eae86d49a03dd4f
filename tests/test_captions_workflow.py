"""Captions through real Snakemake runs against the loopback chat server.

* A 500 storm beyond the retries (30 % of the images): the caption jobs with losses fail and write nothing
  for their shard, the clean shard is written; the rerun against the healed server asks ONLY for the
  images that failed (every success was cached); with ``max_failure_rate: 0.5`` the same storm finishes,
  the losses recorded as rejects and in the stats.
* The ``api_requests`` cap (profile ``resources``): jobs asking for 8 requests in flight under a cap of 2
  are lowered to 2 and never run side by side; the server never sees more than 2 requests at once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from chat_server import ChatServer, image_url
from conftest import REPO, jobs_run, run_snakemake

from relightflow.captions.providers.base import image_data_url
from relightflow.images import load_rgb, save_image
from relightflow.manifest import read_json, read_table
from relightflow.testing import Scene, render_scene

pytestmark = pytest.mark.slow
SHARDS = ("00000", "00001", "00002")  # 10 images, shards of 4: 4 + 4 + 2
SEGMENTS = [f"results/pairs/segments/{s}.parquet" for s in SHARDS]
SUMMARY = "results/captions/stats.json"


def _targets(*files: str) -> list[str]:
    """Targets behind a plain flag: the command line's --rerun-triggers (and --configfile) take lists."""
    return ["--printshellcmds", *files]


def _config(workdir: Path, images: Path, base_url: str, **captions) -> Path:
    openai = {"base_url": base_url, "model": "test-vlm", "concurrency": 2, "max_retries": 1, "backoff_s": 0.01,
              "max_backoff_s": 0.02, "timeout_s": 20, **captions.pop("openai", {})}  # fmt: skip
    cfg = {"input": {"root": str(images)}, "shards": {"size": 4}, "stages": ["ingest", "filter", "pairs", "captions"],
           "filter": {"backend": "stats", "min_side": 32, "dedup": {"phash_distance": None}},
           "pairs": {"segmenter": "classical", "max_side": 96, "threads": 1},
           "captions": {"provider": "openai", "openai": openai, **captions}}  # fmt: skip
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir where ingest, filter and segmentation ran (10 images in 3 shards): captions start here."""
    workdir = tmp_path_factory.mktemp("captions-upstream")
    images = workdir / "images"
    for i in range(10):
        scene = Scene(horizontal=("left", "right")[i % 2], size=96, seed=i)
        save_image(images / f"img{i}.png", render_scene(scene)[0])
    config = _config(workdir, images, "http://127.0.0.1:9/v1")
    run_snakemake(workdir, *_targets(*SEGMENTS), "--configfile", str(config))
    return workdir


def _copy(upstream: Path, tmp_path: Path) -> Path:
    """A private copy of the upstream workdir (mtimes and Snakemake's metadata kept: nothing reruns)."""
    workdir = tmp_path / "work"
    shutil.copytree(upstream, workdir, symlinks=True)
    return workdir


def _urls(workdir: Path, shard: str) -> list[str]:
    """The image data URLs the caption job of ``shard`` sends (the same decoding and encoding)."""
    paths = read_table(workdir / f"results/filter/selected/{shard}.parquet")["path"]
    return [image_data_url(load_rgb(p, max_side=768)) for p in sorted(paths)]


def test_500_storm_fails_the_job_and_the_rerun_asks_only_for_the_failures(upstream: Path, tmp_path: Path) -> None:
    workdir = _copy(upstream, tmp_path)
    shard_urls = {s: _urls(workdir, s) for s in SHARDS}
    assert [len(u) for u in shard_urls.values()] == [4, 4, 2]
    storm = {*shard_urls["00000"][:2], shard_urls["00001"][0]}  # 3 of 10 images: HTTP 500 whatever the retries
    with ChatServer(fault_for=lambda body: "500" if image_url(body) in storm else None) as server:
        cfg = _config(workdir, upstream / "images", server.base_url)
        first = run_snakemake(workdir, *_targets(SUMMARY), "--keep-going", "--configfile", str(cfg), check=False)
        assert first.returncode != 0
        res = workdir / "results/captions"
        for shard in ("00000", "00001"):  # a job with losses fails: nothing written for its shard
            assert not any((res / d / f"{shard}.{ext}").exists() for d, ext in (
                (".", "parquet"), ("rejects", "parquet"), ("stats", "json")))  # fmt: skip
            log = (workdir / f"results/logs/captions/caption/{shard}.log").read_text()
            assert "still failed after their retries" in log and "rerun when the provider is healthy" in log
        assert len(read_table(res / "00002.parquet")) == 2  # the clean shard is written
        storm_requests = [r for r in server.requests if image_url(r["body"]) in storm]
        assert len(storm_requests) == 3 * 2 and {r["fault"] for r in storm_requests} == {"500"}  # 1 retry each

        server.fault_for, before = None, server.n_requests  # the provider heals
        second = run_snakemake(workdir, *_targets(SUMMARY), "--configfile", str(cfg))
        asked = [image_url(r["body"]) for r in server.requests[before:]]
        assert sorted(asked) == sorted(storm)  # only the failures, once each: successes came from the cache
        assert jobs_run(second)["caption"] == 2  # the failed shards only
        summary = read_json(res / "stats.json")
        assert (summary["n_in"], summary["n_kept"], summary["n_rejected"]) == (10, 10, 0)
        for shard, hits_and_asked in {"00000": (2, 2), "00001": (3, 1)}.items():
            counts = read_json(res / "stats" / f"{shard}.json")["counts"]
            assert (counts["cache_hits"], counts["requests"]) == hits_and_asked

        server.fault_for, before = (lambda body: "500" if image_url(body) in storm else None), server.n_requests
        cfg = _config(workdir, upstream / "images", server.base_url, max_failure_rate=0.5, prompt_version="v9")
        run_snakemake(workdir, *_targets(SUMMARY), "--configfile", str(cfg))  # new prompt version: every image asked again
        assert server.n_requests - before == 7 + 3 * 2
    summary = read_json(res / "stats.json")
    assert (summary["n_kept"], summary["n_rejected"], summary["counts"]["request_failures"]) == (7, 3, 3)
    assert summary["reasons"] == {"caption failed": 3}
    rejects = read_table(res / "rejects.parquet")
    assert len(rejects) == 3 and rejects["reason"].str.startswith("caption failed: request failed: HTTP 500").all()
    captions = read_table(res / "00000.parquet")
    assert len(captions) == 2 and not captions["instruction"].str.contains("500|error|failed").any()


def test_api_requests_cap_bounds_requests_in_flight_across_jobs(upstream: Path, tmp_path: Path) -> None:
    workdir = _copy(upstream, tmp_path)
    shard_of = {url: s for s in SHARDS for url in _urls(workdir, s)}
    profile = yaml.safe_load((REPO / "profiles/local/config.yaml").read_text())
    slurm = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert "api_requests" in profile["resources"] and "api_requests" in slurm["resources"]
    assert "api_requests" not in slurm.get("set-resource-scopes", {})  # global: summed over all submitted jobs
    with ChatServer(default="timeout:0.4") as server:  # every answer takes 0.4 s
        cfg = _config(workdir, upstream / "images", server.base_url, openai={"concurrency": 8})
        env = {**os.environ, "RELIGHTFLOW_API_REQUESTS": "2"}
        run = run_snakemake(workdir, *_targets(SUMMARY), "--cores", "3", "--profile", str(REPO / "profiles/local"),
                            "--configfile", str(cfg), env=env)  # fmt: skip
    assert "api_requests=2" in run.stdout + run.stderr  # each job's 8, lowered to the profile's cap
    assert len(server.requests) == 10 and server.peak_in_flight == 2  # 2 at a time, never 8 per job or 16
    spans = {}
    for r in server.requests:
        start, end = spans.get(shard_of[image_url(r["body"])], (r["start"], r["end"]))
        spans[shard_of[image_url(r["body"])]] = (min(start, r["start"]), max(end, r["end"]))
    ordered = sorted(spans.values())
    assert all(a[1] <= b[0] for a, b in zip(ordered, ordered[1:], strict=False))  # the jobs never overlapped


def test_a_key_over_plain_http_fails_when_the_workflow_is_parsed(workdir: Path) -> None:
    images = workdir / "images"
    save_image(images / "a.png", render_scene(size=64)[0])
    cfg = _config(workdir, images, "http://gpu-node-12:8000/v1", openai={"api_key_env": "MY_VLM_KEY"})
    proc = run_snakemake(workdir, *_targets(SUMMARY), "-n", "--configfile", str(cfg), check=False)
    assert proc.returncode != 0 and "refusing to send an API key" in proc.stdout + proc.stderr
    assert not list((workdir / "results").rglob("*.parquet"))  # before any job (only the parsed shard listing)
