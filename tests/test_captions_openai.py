"""The openai provider against a real loopback chat-completions server: faults, retries, cache, key hygiene."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from chat_server import DEFAULT_DESCRIPTION, ChatServer

from relightflow.captions.providers.openai_http import OpenAICaptioner, parse_retry_after
from relightflow.captions.run import CaptionStage
from relightflow.config import section
from relightflow.images import save_image
from relightflow.logs import logged
from relightflow.manifest import read_json, read_table, write_table
from relightflow.shards import ShardOutputs, run_shard
from relightflow.testing import render_scene

KEY_ENV = "RELIGHTFLOW_TEST_KEY"
SECRET = "sk-test-0123456789-secret"


def _cfg(server: ChatServer, provider: str = "openai", **overrides) -> dict:
    """A complete (schema-filled) provider section pointing at the loopback server."""
    cfg = {"base_url": server.base_url, "model": "test-vlm", "api_key_env": KEY_ENV, "concurrency": 1,
           "timeout_s": 5, "max_retries": 3, "backoff_s": 0.01, "max_backoff_s": 0.05, "max_tokens": 100,
           "temperature": 0.0}  # fmt: skip
    return section("captions", {provider: {**cfg, **overrides}})[provider]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return render_scene(size=64, horizontal="left")[0]


def test_success_sends_schema_image_and_key(image: np.ndarray) -> None:
    with ChatServer() as server:
        client = OpenAICaptioner(_cfg(server))
        [result] = client.describe([image])
    assert result.ok and result.description.model_dump() == DEFAULT_DESCRIPTION
    [req] = server.requests
    assert req["headers"]["Authorization"] == f"Bearer {SECRET}"
    body = req["body"]
    assert body["model"] == "test-vlm" and body["response_format"]["type"] == "json_schema"
    assert "seed" not in body  # no seed configured: none sent
    assert body["response_format"]["json_schema"]["schema"]["properties"]["direction"]["enum"][0] == "left"
    url = body["messages"][1]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert client.counters.as_dict() == {"requests": 1, "retries": 0, "failures": 0}


@pytest.mark.parametrize("fault", ["500", "503", "invalid_json", "bad_reply", "timeout:1.5"])
def test_transient_faults_are_retried(image: np.ndarray, fault: str) -> None:
    with ChatServer(faults=[fault, fault]) as server:
        client = OpenAICaptioner(_cfg(server, timeout_s=0.5))
        [result] = client.describe([image])
        assert result.ok and result.attempts == 3
    assert server.n_requests == 3 and client.counters.retries == 2 and client.counters.failures == 0


def test_prose_around_json_is_accepted(image: np.ndarray) -> None:
    with ChatServer(faults=["prose"]) as server:
        [result] = OpenAICaptioner(_cfg(server)).describe([image])
    assert result.ok and result.attempts == 1


def test_429_waits_for_retry_after(image: np.ndarray) -> None:
    with ChatServer(faults=["429:1"]) as server:
        client = OpenAICaptioner(_cfg(server))
        t0 = time.perf_counter()
        [result] = client.describe([image])
        elapsed = time.perf_counter() - t0
    assert result.ok and server.n_requests == 2
    assert elapsed >= 0.95  # the backoff alone would be <= 0.05 s


def test_persistent_invalid_reply_is_a_failure_not_a_caption(image: np.ndarray) -> None:
    with ChatServer(default="bad_reply") as server:
        client = OpenAICaptioner(_cfg(server, max_retries=2))
        [result] = client.describe([image])
    assert not result.ok and result.description is None
    assert result.error.startswith("invalid response:") and result.attempts == 3 == server.n_requests
    assert client.counters.failures == 1


def test_client_errors_are_not_retried(image: np.ndarray) -> None:
    with ChatServer(faults=["400"]) as server:
        [result] = OpenAICaptioner(_cfg(server)).describe([image])
    assert not result.ok and result.error.startswith("request rejected: HTTP 400") and server.n_requests == 1


def test_concurrency_is_bounded(image: np.ndarray) -> None:
    with ChatServer(default="timeout:0.3") as server:
        client = OpenAICaptioner(_cfg(server, concurrency=3))
        t0 = time.perf_counter()
        results = client.describe([image] * 6)
        elapsed = time.perf_counter() - t0
    assert all(r.ok for r in results)
    assert 0.55 <= elapsed < 1.5  # 6 requests of 0.3 s, 3 at a time: 2 waves (not 1, not 6)


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") < 1  # a date in the past: no wait


def _shard(tmp_path: Path, n: int = 3) -> tuple[Path, Path]:
    rows, seg = [], []
    for i in range(n):
        img, mask, _ = render_scene(size=96, seed=i, horizontal=("left", "right", "front")[i % 3])
        path, mpath = tmp_path / f"img{i}.png", tmp_path / f"mask{i}.png"
        save_image(path, img)
        save_image(mpath, mask)
        rows.append({"image_id": f"id{i}", "path": str(path)})
        seg.append({"image_id": f"id{i}", "mask_path": str(mpath) if i != 2 else ""})
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    rows.append({"image_id": "broken", "path": str(tmp_path / "broken.jpg")})
    write_table(tmp_path / "selected.parquet", rows)
    write_table(tmp_path / "segments.parquet", seg)
    return tmp_path / "selected.parquet", tmp_path / "segments.parquet"


def _run(tmp_path: Path, server: ChatServer, tag: str, **cfg_overrides) -> dict:
    selected, segments = _shard(tmp_path)
    cfg = section("captions", {"provider": "openai", "attributes": "override", "max_chars": 120, "batch_size": 2,
                               "openai": _cfg(server), **cfg_overrides})  # fmt: skip
    out = tmp_path / tag
    with logged(out / "job.log"):
        stage = CaptionStage(selected, segments, cfg, tmp_path / "cache")
        run_shard(stage, "00000", ShardOutputs(out / "c.parquet", out / "r.parquet", out / "s.json"))
    return {"captions": read_table(out / "c.parquet"), "rejects": read_table(out / "r.parquet"),
            "stats": read_json(out / "s.json"), "log": (out / "job.log").read_text()}  # fmt: skip


def test_shard_run_then_rerun_from_cache_makes_no_request(tmp_path: Path) -> None:
    with ChatServer() as server:
        first = _run(tmp_path, server, "first")
        assert server.n_requests == 3
        second = _run(tmp_path, server, "second")
        assert server.n_requests == 3  # warm cache: zero new requests
    caps, stats = first["captions"], first["stats"]
    assert len(caps) == 3 and list(first["rejects"]["image_id"]) == ["broken"]
    assert first["rejects"]["reason"][0].startswith("unreadable image:")
    assert stats["counts"]["cache_misses"] == 3 and stats["counts"]["requests"] == 3
    assert second["stats"]["counts"]["cache_hits"] == 3 and second["stats"]["counts"].get("requests") == 0
    assert list(second["captions"]["cache_hit"]) == [True] * 3
    assert list(second["captions"]["instruction"]) == list(caps["instruction"])
    # override: the measured direction replaces the VLM's "left" where they disagree
    by_id = caps.set_index("image_id")
    assert (
        by_id.loc["id1", "measured_horizontal"] == "right"
        and "from the right" in by_id.loc["id1", "instruction"]
    )
    assert not by_id.loc["id1", "agreement_direction"] and by_id.loc["id0", "agreement_direction"]
    assert (
        by_id.loc["id0", "vlm_light_source"] == "window light"
        and by_id.loc["id0", "source"] == "openai/test-vlm"
    )
    assert SECRET not in first["log"] + second["log"]


def test_cache_key_includes_prompt_version(tmp_path: Path) -> None:
    with ChatServer() as server:
        _run(tmp_path, server, "v1")
        _run(tmp_path, server, "v2", prompt_version="v2")
        assert server.n_requests == 6


def test_failed_caption_is_a_reject_row(tmp_path: Path) -> None:
    # concurrency 1 and batch order: the first image gets 3 bad replies (all its attempts), the rest succeed
    with ChatServer(faults=["bad_reply"] * 3) as server:
        res = _run(tmp_path, server, "run", openai=_cfg(server, max_retries=2), max_failure_rate=1.0)
    rejects = res["rejects"].set_index("image_id")
    assert rejects.loc["id0", "reason"].startswith("caption failed: invalid response")
    assert set(res["captions"]["image_id"]) == {"id1", "id2"}
    assert not res["captions"]["instruction"].str.contains("invalid|error|sorry", case=False).any()
    assert res["stats"]["n_in"] == 4 and res["stats"]["n_rejected"] == 2


def test_unreachable_provider_fails_the_job_without_outputs(tmp_path: Path) -> None:
    with ChatServer(default="500") as server, pytest.raises(RuntimeError, match="still failed after their retries"):
        _run(tmp_path, server, "down", openai=_cfg(server, max_retries=1))
    assert not (tmp_path / "down" / "c.parquet").exists()


def test_stats_json_is_valid(tmp_path: Path) -> None:
    with ChatServer(faults=["500"]) as server:
        res = _run(tmp_path, server, "s")
    extra = res["stats"]["counts"]
    assert extra["retries"] == 1 and extra["requests"] == 4 and extra["failures"] == 0
    json.dumps(res["stats"])
