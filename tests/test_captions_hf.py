"""The transformers provider with a tiny Qwen3-VL saved to disk and loaded like a real checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from chat_server import DEFAULT_DESCRIPTION

from relightflow.captions.providers.hf_local import TransformersCaptioner
from relightflow.captions.run import CaptionStage
from relightflow.config import section
from relightflow.images import save_image
from relightflow.manifest import read_json, read_table, write_table
from relightflow.shards import ShardOutputs, run_shard
from relightflow.testing import render_scene
from relightflow.testing.tiny_vlm import build_tiny_qwen3vl

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3-VL overfitted to answer DEFAULT_DESCRIPTION (so replies validate)."""
    return build_tiny_qwen3vl(tmp_path_factory.mktemp("taught"), reply=DEFAULT_DESCRIPTION)


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3vl(tmp_path_factory.mktemp("random"))


def _hf(**options) -> dict:
    return section("captions", {"transformers": options})["transformers"]


def _images() -> list[np.ndarray]:
    """Different sizes, so the batch is left-padded."""
    return [render_scene(size=64, seed=0)[0], render_scene(size=96, seed=5)[0][:, :80]]


def test_checkpoint_folder_looks_like_a_real_one(taught: Path) -> None:
    names = {p.name for p in taught.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names


def test_batched_generation_is_decoded_and_validated(taught: Path) -> None:
    captioner = TransformersCaptioner(_hf(model=str(taught), max_new_tokens=60))
    assert captioner.net is None  # nothing loaded until needed
    results = captioner.describe(_images())
    assert [r.description.model_dump() for r in results] == [DEFAULT_DESCRIPTION] * 2
    assert all(r.raw.startswith("{") for r in results)  # only the new tokens, not the prompt
    assert captioner.counters.as_dict() == {"requests": 2, "retries": 0, "failures": 0}


def test_random_model_gives_failures_not_captions(random_model: Path) -> None:
    captioner = TransformersCaptioner(_hf(model=str(random_model), max_new_tokens=16, temperature=0.7, max_retries=1))
    results = captioner.describe(_images())
    assert all(not r.ok and r.error.startswith("invalid response") and r.attempts == 2 for r in results)
    assert captioner.counters.as_dict() == {"requests": 4, "retries": 2, "failures": 2}


def test_shard_with_transformers_provider_and_warm_cache(taught: Path, tmp_path: Path) -> None:
    rows = []
    for i, image in enumerate(_images()):
        save_image(tmp_path / f"{i}.png", image)
        rows.append({"image_id": f"id{i}", "path": str(tmp_path / f"{i}.png")})
    write_table(tmp_path / "selected.parquet", rows)
    cfg = section("captions", {"provider": "transformers", "attributes": "check", "template": "{phrase}",
                               "transformers": {"model": str(taught), "max_new_tokens": 60, "max_side": 96}})  # fmt: skip
    for run in ("cold", "warm"):
        captioner = TransformersCaptioner(cfg["transformers"])
        stage = CaptionStage(tmp_path / "selected.parquet", None, cfg, tmp_path / "cache", captioner=captioner)
        outputs = ShardOutputs(tmp_path / run / "c.parquet", tmp_path / run / "r.parquet", tmp_path / run / "s.json")
        run_shard(stage, "00000", outputs)
    cold, warm = read_table(tmp_path / "cold" / "c.parquet"), read_table(tmp_path / "warm" / "c.parquet")
    assert list(cold["instruction"]) == ["warm window light from the left, indoor"] * 2
    assert cold["source"][0] == f"transformers/{taught}" and not cold["cache_hit"].any()
    assert warm["cache_hit"].all() and list(warm["instruction"]) == list(cold["instruction"])
    assert captioner.net is None  # warm cache: the model was never loaded
    assert read_json(tmp_path / "warm" / "s.json")["counts"]["cache_hits"] == 2
