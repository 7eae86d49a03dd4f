"""The caption stage on a shard with the measured provider; vLLM's shared code; the summary gather."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from chat_server import DEFAULT_DESCRIPTION

from relightflow.captions.providers import make_captioner
from relightflow.captions.providers.base import chat_messages
from relightflow.captions.providers.vllm_offline import VLLMCaptioner, llm_kwargs, visible_gpu_count
from relightflow.captions.run import COLUMNS, MEASURE_VERSION, CaptionStage
from relightflow.config import section
from relightflow.images import save_image
from relightflow.manifest import read_json, read_table, write_table
from relightflow.shards import ShardOutputs, gather, run_shard
from relightflow.testing import Scene, render_scene

CFG = section("captions", provider="measured", batch_size=2)
TRUTH = [("left", "above", "warm"), ("right", "level", "cool"), ("front", "below", "neutral")]


def _write_shard(tmp_path: Path) -> tuple[Path, Path]:
    rows, seg = [], []
    for i, (h, v, c) in enumerate(TRUTH):
        image, mask, _ = render_scene(Scene(h, v, c, size=128, seed=i))
        save_image(tmp_path / f"{i}.png", image)
        save_image(tmp_path / f"{i}_mask.png", mask)
        rows.append({"image_id": f"id{i}", "path": str(tmp_path / f"{i}.png"), "split": "train"})
        seg.append({"image_id": f"id{i}", "mask_path": str(tmp_path / f"{i}_mask.png")})
    (tmp_path / "empty.png").write_bytes(b"")
    rows += [{"image_id": "empty", "path": str(tmp_path / "empty.png"), "split": "train"},
             {"image_id": "gone", "path": str(tmp_path / "missing.png"), "split": "val"}]  # fmt: skip
    seg.append({"image_id": "gone", "mask_path": str(tmp_path / "no_mask.png")})
    write_table(tmp_path / "selected.parquet", rows)
    write_table(tmp_path / "segments.parquet", seg)
    return tmp_path / "selected.parquet", tmp_path / "segments.parquet"


def _run(tmp_path: Path, cfg: dict, segments: bool = True) -> dict:
    selected, seg = _write_shard(tmp_path)
    out = tmp_path / "out"
    stage = CaptionStage(selected, seg if segments else None, cfg, tmp_path / "cache")
    stats = run_shard(stage, "00007", ShardOutputs(out / "c.parquet", out / "r.parquet", out / "s.json"))
    return {"stats": stats, "captions": read_table(out / "c.parquet"), "rejects": read_table(out / "r.parquet"),
            "stats_json": read_json(out / "s.json")}  # fmt: skip


def test_measured_provider_captions_a_shard(tmp_path: Path) -> None:
    res = _run(tmp_path, CFG)
    caps = res["captions"].set_index("image_id")
    assert list(res["captions"].columns[: len(COLUMNS)]) == COLUMNS
    assert sorted(caps.index) == ["id0", "id1", "id2"]
    assert caps.loc["id0", "instruction"] == "soft warm daylight from the upper left"  # hardness and source measured
    assert caps.loc["id1", "light_direction"] == "right" and caps.loc["id1", "color_temperature"] == "cool"
    assert (
        caps.loc["id2", "light_direction"] == "bottom" and caps.loc["id2", "color_temperature"] == "neutral"
    )
    assert set(caps["source"]) == {f"measured/{MEASURE_VERSION}"} and caps["measured_mask_used"].all()
    assert not caps["cache_hit"].any() and caps["vlm_direction"].isna().all()
    rejects = res["rejects"].set_index("image_id")["reason"]
    assert (
        rejects["empty"].startswith("unreadable image")
        and rejects["gone"] == "unreadable image: missing file"
    )
    s = res["stats_json"]
    assert (s["n_in"], s["n_kept"], s["n_rejected"]) == (5, 3, 2) and s["reasons"] == {"unreadable image": 2}
    assert s["counts"]["direction_from_measured"] == 3 and s["counts"]["direction_left_out"] == 0


def test_flat_light_leaves_the_direction_out(tmp_path: Path) -> None:
    image, mask, _ = render_scene(Scene("front", "level", "warm", size=128, seed=3))  # no side, no height
    save_image(tmp_path / "flat.png", image)
    save_image(tmp_path / "flat_mask.png", mask)
    write_table(tmp_path / "selected.parquet", [{"image_id": "flat", "path": str(tmp_path / "flat.png")}])
    write_table(tmp_path / "segments.parquet", [{"image_id": "flat", "mask_path": str(tmp_path / "flat_mask.png")}])
    out = tmp_path / "out"
    stage = CaptionStage(tmp_path / "selected.parquet", tmp_path / "segments.parquet", CFG, tmp_path / "cache")
    run_shard(stage, "00000", ShardOutputs(out / "c.parquet", out / "r.parquet", out / "s.json"))
    [row] = read_table(out / "c.parquet").to_dict("records")
    assert row["measured_direction_confidence"] < CFG["min_confidence"]
    assert row["instruction"] == "soft warm daylight" and row["light_direction"] is None
    assert row["direction_source"] == "none" and row["color_temperature"] == "warm"
    assert read_json(out / "s.json")["counts"]["direction_left_out"] == 1


def test_missing_segments_means_no_masks(tmp_path: Path) -> None:
    res = _run(tmp_path, CFG, segments=False)
    assert not res["captions"]["measured_mask_used"].any() and len(res["captions"]) == 3


@pytest.mark.parametrize(("policy", "used"), [("auto", [True, False, True]), ("always", [True, True, True]),
                                              ("never", [False, False, False])])  # fmt: skip
def test_measure_mask_policy_uses_masks_of_found_subjects(tmp_path: Path, policy: str, used: list) -> None:
    selected, seg = _write_shard(tmp_path)
    table = read_table(seg)
    table["prompt"] = ["face", "box", "text:person", "face"]  # id1: the prior box, no subject found
    write_table(seg, table.to_dict("records"))
    out = tmp_path / "out"
    stage = CaptionStage(selected, seg, {**CFG, "measure_mask": policy}, tmp_path / "cache")
    run_shard(stage, "00000", ShardOutputs(out / "c.parquet", out / "r.parquet", out / "s.json"))
    caps = read_table(out / "c.parquet").set_index("image_id").loc[["id0", "id1", "id2"]]
    assert caps["measured_mask_used"].tolist() == used
    assert [bool(p) for p in caps["mask_path"]] == used  # what evaluate re-measures with


def test_rerun_rewrites_identical_bytes(tmp_path: Path) -> None:
    _run(tmp_path, CFG)
    first = (tmp_path / "out" / "c.parquet").read_bytes()
    _run(tmp_path, CFG)
    assert (tmp_path / "out" / "c.parquet").read_bytes() == first


def test_gather_sums_shards(tmp_path: Path) -> None:
    res = _run(tmp_path, CFG)
    out = tmp_path / "out"
    summary = gather([str(out / "s.json")] * 2, [str(out / "r.parquet")] * 2,
                     str(tmp_path / "stats.json"), str(tmp_path / "rejects.parquet"))  # fmt: skip
    assert summary["n_in"] == 2 * res["stats"].n_in and summary["counts"]["cache_hits"] == 0
    assert len(read_table(tmp_path / "rejects.parquet")) == 4


def test_bad_template_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown template field"):
        _run(tmp_path, {**CFG, "template": "{lite} from the {direction}"})


def _vllm(**options) -> dict:
    return section("captions", {"vllm": options})["vllm"]


class FakeLLM:
    """Stands in for ``vllm.LLM`` (same ``chat`` signature and output shape) to test our side of the call."""

    def __init__(self, replies: list[list[str]]):
        self.replies, self.calls = list(replies), []

    def chat(self, messages, sampling_params, use_tqdm=True):
        self.calls.append((messages, sampling_params))
        return [SimpleNamespace(outputs=[SimpleNamespace(text=t)]) for t in self.replies.pop(0)]


def test_vllm_provider_revalidates_only_invalid_replies() -> None:
    good = json.dumps(DEFAULT_DESCRIPTION)
    llm = FakeLLM([[good, "not json", good], [good]])
    captioner = VLLMCaptioner(_vllm(model="m", max_retries=2), llm=llm, sampling_params="sp")
    images = [np.zeros((16, 16, 3), np.uint8) + i for i in range(3)]
    results = captioner.describe(images)
    assert [r.ok for r in results] == [True, True, True] and results[1].attempts == 2
    assert len(llm.calls[1][0]) == 1 and llm.calls[1][0][0] == chat_messages(images[1])
    assert captioner.counters.as_dict() == {"requests": 4, "retries": 1, "failures": 0}


def test_vllm_provider_gives_up_after_retries() -> None:
    llm = FakeLLM([["nope"], ["nope"]])
    [result] = VLLMCaptioner(_vllm(model="m", max_retries=1), llm=llm).describe(
        [np.zeros((8, 8, 3), np.uint8)]
    )
    assert not result.ok and result.error.startswith("invalid response") and result.attempts == 2


def test_vllm_engine_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpu_count() == 2
    kwargs = llm_kwargs(_vllm(max_model_len=4096))
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["max_model_len"] == 4096
    assert kwargs["limit_mm_per_prompt"] == {"image": 1}


def test_vllm_is_imported_lazily() -> None:
    captioner = make_captioner(section("captions", {"provider": "vllm", "vllm": {"model": "m"}}))  # no engine yet
    assert captioner.llm is None and captioner.params()["structured"] is True and captioner.params()["seed"] == 0
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError):
            captioner.describe([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="provider"):
        make_captioner({"provider": "gpt"})
