"""Backend clip+stats: the tiny CLIP's score gated by the measured exposure and clipping, end to end on a
shard, and the gate's effect on exposure brackets."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402

from relightflow.config import section  # noqa: E402
from relightflow.filter import stats  # noqa: E402
from relightflow.filter.combined import GATE_RULES, backend_config, exposure_gate  # noqa: E402
from relightflow.filter.score import ScoreStage, make_scorer  # noqa: E402
from relightflow.images import save_image  # noqa: E402
from relightflow.manifest import read_json, read_table, write_table  # noqa: E402
from relightflow.shards import ShardOutputs, run_shard  # noqa: E402
from relightflow.testing import camera, tiny_clip  # noqa: E402

torch.set_num_threads(1)
PAIRS = [["a well lit photo", "a poorly lit photo"], ["Bright photo.", "Dark photo."]]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    config, checkpoint = tiny_clip.save_tiny_clip(tmp_path_factory.mktemp("tiny"))
    filter_cfg = section("filter", backend="clip+stats", clip={"model": config, "pretrained": checkpoint, "prompts": PAIRS})
    return backend_config(filter_cfg, "clip+stats")


def _brackets(name: str) -> list[np.ndarray]:
    return camera.bracket(camera.photo_to_raw(getattr(data, name)()), (-1.5, 0.0, 1.5), seed=1)


def test_backend_config_merges_clip_and_gate(cfg):
    assert cfg["prompts"] == PAIRS and cfg["gate"] == {"strength": 1.0, "max_side": 256}
    assert backend_config({"stats": {"max_side": 64}}, "stats") == {"max_side": 64}


def test_gated_score_is_clip_times_gate_and_drops_bad_exposures(cfg):
    scorer = make_scorer("clip+stats", cfg)
    frames = _brackets("coffee")
    batch = np.stack([scorer.prepare(f) for f in frames])
    assert batch.shape == (3, *scorer.shape)
    out = scorer.score(batch)
    np.testing.assert_allclose(out["lighting_score"], out["clip_score"] * out["exposure_gate"], rtol=1e-6)
    clip_alone = make_scorer("clip", cfg).score(
        np.stack([make_scorer("clip", cfg).prepare(f) for f in frames])
    )
    np.testing.assert_allclose(out["clip_score"], clip_alone["lighting_score"], atol=1e-5)
    gate = out["exposure_gate"]
    assert gate[1] > 0.8 and gate[1] > gate[0] and gate[1] > gate[2], gate  # 0 EV passes, +-1.5 EV are gated
    measured = {k: out[k] for k in stats.STAT_NAMES}
    np.testing.assert_allclose(exposure_gate(measured), gate)
    assert exposure_gate(measured, strength=0.0).tolist() == [1.0, 1.0, 1.0]


def test_gate_only_reads_exposure_and_clipping():
    clean = {k: 0.0 for k in stats.STAT_NAMES} | {"exposure_stops": 0.25}
    murky = dict(clean, local_contrast=0.0, noise=30.0, sharpness=0.0)
    assert float(exposure_gate(murky)) == pytest.approx(1.0)
    assert float(exposure_gate(dict(clean, clipped_highlights=0.3))) < 0.5
    assert float(exposure_gate(dict(clean, exposure_stops=-2.5))) < 0.3
    assert set(GATE_RULES) <= set(stats.PENALTIES)


def test_scores_a_shard_with_all_columns(tmp_path, cfg):
    rows = []
    for i, name in enumerate(("astronaut", "chelsea", "coffee")):
        save_image(tmp_path / f"{name}.jpg", getattr(data, name)())
        rows.append(
            {"image_id": f"img{i}", "path": str(tmp_path / f"{name}.jpg"), "width": 512, "height": 512}
        )
    write_table(tmp_path / "manifest.parquet", rows)
    outs = [tmp_path / "scores.parquet", tmp_path / "rejects.parquet", tmp_path / "stats.json"]
    stage = ScoreStage(tmp_path / "manifest.parquet", "clip+stats", {**cfg, "num_workers": 0})
    run_shard(stage, "00000", ShardOutputs(*outs))
    scores = read_table(outs[0])
    assert scores["image_id"].tolist() == ["img0", "img1", "img2"]
    assert (scores["backend"] == "clip+stats").all()
    for col in ("clip_score", "exposure_gate", "sim_pos_0", *stats.STAT_NAMES):
        assert col in scores
    np.testing.assert_allclose(
        scores["lighting_score"], scores["clip_score"] * scores["exposure_gate"], rtol=1e-5
    )
    assert read_json(outs[2])["info"]["gate_strength"] == 1.0
