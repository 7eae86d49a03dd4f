"""Secrets and endpoints: a key goes only over https or to loopback, which variable holds it, no credentials
in any log line; the mistral preset against the loopback server; the cache key through a real shard run."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import numpy as np
import pytest
from chat_server import ChatServer
from test_captions_openai import _cfg, _shard

from relightflow.captions import schema
from relightflow.captions.endpoints import (
    InsecureEndpoint,
    check_endpoint,
    is_loopback,
    key_env,
    parse_endpoint,
    redact,
    redact_logs,
)
from relightflow.captions.providers import make_captioner
from relightflow.captions.providers.openai_http import OpenAICaptioner
from relightflow.captions.run import CaptionStage
from relightflow.config import section
from relightflow.images import save_image
from relightflow.logs import logged
from relightflow.manifest import read_json, read_table
from relightflow.shards import ShardOutputs, run_shard
from relightflow.testing import render_scene

SECRET = "s3cret-pw-4242"


def _section(provider: str = "openai", **options) -> dict:
    return section("captions", {provider: options})[provider]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.0.3", "localhost", "[::1]", "api.localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(parse_endpoint(f"http://{host}:8000/v1").host)


@pytest.mark.parametrize("host", ["10.0.0.5", "gpu-node-12", "example.com", "127.0.0.1.example.com"])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback(parse_endpoint(f"http://{host}:8000/v1").host)


def test_key_only_over_https_or_loopback() -> None:
    remote = "http://gpu-node-12:8000/v1"
    with pytest.raises(InsecureEndpoint, match="gpu-node-12"):
        check_endpoint(_section(base_url=remote, api_key_env="MY_KEY"))
    with pytest.raises(InsecureEndpoint):  # URL credentials are a secret too
        check_endpoint(_section(base_url=f"http://user:{SECRET}@gpu-node-12:8000/v1"))
    with pytest.raises(InsecureEndpoint):  # the client refuses as well, before any request
        OpenAICaptioner(_section(base_url=remote, api_key_env="MY_KEY"))
    check_endpoint(_section(base_url=remote))  # no key: plain http is fine
    check_endpoint(_section(base_url=remote, api_key_env="MY_KEY", allow_insecure_key=True))
    check_endpoint(_section(base_url="https://gpu-node-12/v1", api_key_env="MY_KEY"))
    check_endpoint(_section(base_url="http://127.0.0.1:8000/v1", api_key_env="MY_KEY"))
    with pytest.raises(InsecureEndpoint):  # the mistral preset names its key variable: plain http is refused
        check_endpoint(_section("mistral", base_url=remote))


def test_default_key_variable_only_for_openai() -> None:
    assert key_env(None, parse_endpoint("https://api.openai.com/v1")) == "OPENAI_API_KEY"
    assert key_env(None, parse_endpoint("https://api.together.xyz/v1")) is None
    assert key_env(None, parse_endpoint("http://127.0.0.1:8000/v1")) is None
    assert key_env("OTHER", parse_endpoint("https://api.openai.com/v1")) == "OTHER"
    assert _section()["api_key_env"] is None and _section("mistral")["api_key_env"] == "MISTRAL_API_KEY"


def test_openai_key_is_not_sent_to_another_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    with ChatServer() as server:
        [result] = OpenAICaptioner(_cfg(server, api_key_env=None)).describe([render_scene(size=48)[0]])
    assert result.ok and "Authorization" not in server.requests[0]["headers"]


def test_redact() -> None:
    assert redact(f"POST http://bob:{SECRET}@host:8/v1 and https://tok@h/x") == (
        "POST http://***@host:8/v1 and https://***@h/x"
    )
    assert redact("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


def test_url_credentials_become_basic_auth_and_never_reach_the_log(tmp_path: Path) -> None:
    with ChatServer() as server:
        url = server.base_url.replace("http://", f"http://bob:{SECRET}@")
        with logged(tmp_path / "job.log"):
            stage = CaptionStage(*_shard(tmp_path), section("captions", {"provider": "openai", "openai": _cfg(
                server, base_url=url, api_key_env=None)}), tmp_path / "cache")  # fmt: skip
            run_shard(stage, "00000", ShardOutputs(tmp_path / "c.parquet", tmp_path / "r.parquet", tmp_path / "s.json"))
            logging.getLogger("relightflow.test").info("endpoint was %s", url)  # even a careless line
            try:
                raise RuntimeError(f"could not reach {url}")
            except RuntimeError:
                logging.getLogger("relightflow.test").exception("failure")
    expected = "Basic " + base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert {r["headers"]["Authorization"] for r in server.requests} == {expected}
    text = (tmp_path / "job.log").read_text()
    assert "endpoint was http://***@127.0.0.1" in text and "could not reach http://***@" in text
    assert SECRET not in text and "HTTP Request" in text  # httpx's own request lines are there, clean
    assert SECRET not in read_json(tmp_path / "s.json").__repr__()
    assert SECRET not in read_table(tmp_path / "c.parquet").to_csv()


def test_redaction_stays_on_the_handlers_for_the_last_lines(tmp_path: Path) -> None:
    root = logging.getLogger()
    handler = logging.FileHandler(tmp_path / "x.log")
    root.addHandler(handler)
    try:
        redact_logs()
        redact_logs()  # idempotent
        assert len(handler.filters) == 1
        logging.getLogger("relightflow").warning("job failed at https://u:%s@h/v1", SECRET)
    finally:
        root.removeHandler(handler)
        handler.close()
    assert SECRET not in (tmp_path / "x.log").read_text()


def test_mistral_preset_against_the_loopback_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", "mk-test-key")
    with ChatServer() as server:
        cfg = section("captions", {"provider": "mistral", "attributes": "check",
                                   "mistral": {"base_url": server.base_url, "seed": 7, "backoff_s": 0.01}})  # fmt: skip
        client = make_captioner(cfg)
        assert client.name == "mistral" and client.model == "mistral-small-latest"
        [result] = client.describe([render_scene(size=48)[0]])
        out = tmp_path / "out"
        stage = CaptionStage(*_shard(tmp_path), cfg, tmp_path / "cache")
        run_shard(stage, "00000", ShardOutputs(out / "c.parquet", out / "r.parquet", out / "s.json"))
    assert result.ok
    req = server.requests[0]
    assert req["headers"]["Authorization"] == "Bearer mk-test-key"
    assert req["body"]["model"] == "mistral-small-latest" and req["body"]["random_seed"] == 7
    assert "seed" not in req["body"] and req["body"]["response_format"]["type"] == "json_schema"
    assert set(read_table(out / "c.parquet")["source"]) == {"mistral/mistral-small-latest"}


# ---------------------------------------------------------------- the cache key, through a real shard run


def _cached_run(tmp_path: Path, server: ChatServer, tag: str, **overrides) -> dict:
    """One shard run against ``server``; ``overrides``: captions keys, or ``openai`` keys via ``openai=``."""
    openai = _cfg(server, **overrides.pop("openai", {}))
    cfg = section("captions", {"provider": "openai", "openai": openai, **overrides})
    out = tmp_path / tag
    stage = CaptionStage(tmp_path / "selected.parquet", tmp_path / "segments.parquet", cfg, tmp_path / "cache")
    stats = run_shard(stage, "00000", ShardOutputs(out / "c.parquet", out / "r.parquet", out / "s.json"))
    return stats.counts


CHANGES = {
    "model": {"openai": {"model": "other-vlm"}},
    "prompt_version": {"prompt_version": "v9"},
    "max_side": {"max_side": 64},  # the images are 96 px: sent smaller
    "temperature": {"openai": {"temperature": 0.7}},
    "max_tokens": {"openai": {"max_tokens": 150}},
    "seed": {"openai": {"seed": 3}},
    "structured": {"openai": {"structured": "json_object"}},
}


@pytest.mark.parametrize("change", [*CHANGES, "endpoint", "image bytes", "prompt text", "nothing"])
def test_cache_misses_on_any_change_and_hits_on_none(tmp_path: Path, change: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    _shard(tmp_path)
    with ChatServer() as server, ChatServer() as other:
        first = _cached_run(tmp_path, server, "first")
        assert first["cache_misses"] == 3 and first["cache_hits"] == 0
        overrides = dict(CHANGES.get(change, {}))
        target = server
        if change == "endpoint":
            target = other  # same answers, another base URL
        elif change == "image bytes":
            image = render_scene(size=96, seed=0, horizontal="left")[0]
            save_image(tmp_path / "img0.png", np.ascontiguousarray(image[:, ::-1]))  # one image, new pixels
        elif change == "prompt text":
            monkeypatch.setattr(schema, "USER_PROMPT", schema.USER_PROMPT + " Be literal.")
        second = _cached_run(tmp_path, target, "second", **overrides)
    if change == "nothing":
        assert (second["cache_hits"], second["cache_misses"], second["requests"]) == (3, 0, 0)
    elif change == "image bytes":
        assert (second["cache_hits"], second["cache_misses"]) == (2, 1)
    else:
        assert (second["cache_hits"], second["cache_misses"], second["requests"]) == (0, 3, 3), change
