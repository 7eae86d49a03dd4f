"""CLIP backend with a tiny random open_clip model saved to disk and loaded like a released checkpoint."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402

from relightflow.config import section  # noqa: E402
from relightflow.filter import clip  # noqa: E402
from relightflow.filter.score import SCORE_COLUMNS, ScoreStage  # noqa: E402
from relightflow.images import (
    load_reduced,  # noqa: E402
    save_image,  # noqa: E402
)
from relightflow.manifest import read_json, read_table, write_table  # noqa: E402
from relightflow.shards import ShardOutputs, run_shard  # noqa: E402
from relightflow.testing import tiny_clip  # noqa: E402

torch.set_num_threads(1)
PAIRS = [
    ["a photo with soft, flattering lighting", "a photo with harsh, unflattering lighting"],
    ["Bright photo.", "Dark photo."],
    ["a well lit portrait", "a poorly lit portrait"],
]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config, checkpoint = tiny_clip.save_tiny_clip(tmp_path_factory.mktemp("tiny"))
    return section("filter", clip={"model": config, "pretrained": checkpoint, "prompts": PAIRS})["clip"]


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """A manifest of real photos (JPEG and PNG) with a truncated file and a missing file in between."""
    root = tmp_path_factory.mktemp("photos")
    rows = []
    for i, name in enumerate(PHOTOS):
        path = root / f"{name}.{'png' if i % 2 else 'jpg'}"
        save_image(path, getattr(data, name)())
        rows.append({"image_id": f"img{i}", "path": str(path), "width": 512, "height": 512})
    broken = root / "broken.jpg"
    broken.write_bytes((root / "astronaut.jpg").read_bytes()[:2000])
    rows.insert(1, {"image_id": "broken", "path": str(broken), "width": 512, "height": 512})
    rows.insert(4, {"image_id": "missing", "path": str(root / "gone.jpg"), "width": 512, "height": 512})
    manifest = root / "manifest.parquet"
    write_table(manifest, rows)
    return manifest, rows


def _score(tmp_path, manifest, cfg, **extra):
    out = {
        k: tmp_path / f"{k}.{ext}"
        for k, ext in (("scores", "parquet"), ("rejects", "parquet"), ("stats", "json"))
    }
    run_shard(ScoreStage(manifest, "clip", {**cfg, **extra}), "00007", ShardOutputs(out["scores"], out["rejects"], out["stats"]))
    return read_table(out["scores"]), read_table(out["rejects"]), read_json(out["stats"])


def test_tiny_checkpoint_loads_through_the_real_loader(tiny):
    model, tokenizer, pp = clip.load_clip(tiny["model"], tiny["pretrained"])
    saved = torch.load(tiny["pretrained"], map_location="cpu")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name])
    assert pp["size"] in (64, (64, 64))
    assert tokenizer(["a photo"]).shape == (1, 77)


def test_scores_real_images_with_rejects_and_aligned_ids(tmp_path, tiny, shard):
    manifest, rows = shard
    scores, rejects, stats = _score(tmp_path, manifest, tiny, batch_size=2, num_workers=2)
    good = [r["image_id"] for r in rows if r["image_id"] not in ("broken", "missing")]
    assert scores["image_id"].tolist() == good
    assert list(scores.columns[: len(SCORE_COLUMNS)]) == SCORE_COLUMNS
    assert scores["lighting_score"].between(0, 1).all()
    assert (scores["backend"] == "clip").all() and (scores["shard"] == "00007").all()
    reasons = dict(zip(rejects["image_id"], rejects["reason"], strict=True))
    assert reasons["broken"].startswith("corrupt image") and reasons["missing"] == "missing file"
    assert stats["n_in"] == len(rows) == stats["n_kept"] + stats["n_rejected"]
    # every score belongs to its own image: rescoring each image alone gives the same number
    scorer = clip.ClipScorer(tiny)
    by_id = {r["image_id"]: r["path"] for r in rows}
    for image_id, score in zip(scores["image_id"], scores["lighting_score"], strict=True):
        alone = scorer.score(scorer.prepare(load_reduced(by_id[image_id], scorer.decode_side))[None])
        assert alone["lighting_score"][0] == pytest.approx(score, abs=1e-5)


def test_stored_similarities_reproduce_and_reweight_the_score(tmp_path, tiny, shard):
    scores, _, _ = _score(tmp_path, shard[0], tiny, num_workers=0)
    sims = scores[[f"sim_{kind}_{k}" for k in range(len(PAIRS)) for kind in ("pos", "neg")]].to_numpy()
    probs = clip.pair_probabilities(torch.tensor(sims), 100.0).numpy()
    np.testing.assert_allclose(probs.mean(axis=1), scores["lighting_score"], atol=1e-5)
    assert probs.shape == (len(scores), len(PAIRS))
    assert scores["prompts_version"].nunique() == 1


def test_pair_probabilities_prefer_the_closer_prompt():
    sims = torch.tensor([[0.30, 0.20, 0.10, 0.10], [0.20, 0.30, 0.25, 0.05]])
    probs = clip.pair_probabilities(sims, 100.0)
    assert probs[0, 0] > 0.99 and probs[0, 1] == pytest.approx(0.5)
    assert probs[1, 0] < 0.01 and probs[1, 1] > 0.99


def test_embeddings_stored_when_asked(tmp_path, tiny, shard):
    scores, _, _ = _score(tmp_path, shard[0], tiny, num_workers=0, store_embeddings=True)
    emb = np.stack(scores["embedding"].to_numpy())
    assert emb.shape == (len(scores), tiny_clip.TINY_CONFIG["embed_dim"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_bf16_autocast_close_to_fp32(tmp_path, tiny, shard):
    fp32, _, _ = _score(tmp_path, shard[0], tiny, num_workers=0, precision="fp32")
    bf16, _, stats = _score(tmp_path, shard[0], tiny, num_workers=0, precision="bf16")
    assert stats["info"]["dtype"] == "torch.bfloat16"
    np.testing.assert_allclose(bf16["sim_pos_0"], fp32["sim_pos_0"], atol=0.03)
    assert clip.autocast_dtype("auto", torch.device("cpu")) is None
    assert clip.autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16


def test_empty_shard_writes_empty_tables(tmp_path, tiny):
    manifest = tmp_path / "empty.parquet"
    write_table(manifest, [], columns=["image_id", "path", "width", "height"])
    scores, rejects, stats = _score(tmp_path, manifest, tiny, num_workers=0)
    assert len(scores) == 0 and "lighting_score" in scores and "sim_neg_2" in scores
    assert len(rejects) == 0 and stats["n_in"] == 0


def test_prompts_split_by_yaml_commas_are_rejected(tiny):
    with pytest.raises(ValueError, match="quote prompts"):
        clip.ClipScorer({**tiny, "prompts": [["a photo with soft", "flattering lighting", "a dark photo"]]})


def test_fast_preprocessing_matches_open_clip(tmp_path):
    """Reduced decode + OpenCV resize + crop + on-device normalisation ~ open_clip's PIL transform at 224."""
    import open_clip

    config, checkpoint = tiny_clip.save_tiny_clip(tmp_path / "m224", "tiny-224", image_size=224, patch_size=32)
    cfg = section("filter", clip={"model": config, "pretrained": checkpoint, "prompts": PAIRS})["clip"]
    _, _, preprocess = open_clip.create_model_and_transforms(
        clip.register_model(config), pretrained=checkpoint
    )
    scorer = clip.ClipScorer(cfg)
    cat = np.asarray(Image.fromarray(data.chelsea()).resize((1024, 681), Image.Resampling.BICUBIC))
    for suffix, tolerance in ((".png", 0.03), (".jpg", 0.05)):  # mean abs, normalised (1 grey level ~ 0.015)
        path = tmp_path / f"cat{suffix}"
        save_image(path, cat)
        with Image.open(path) as img:
            reference = preprocess(img.convert("RGB"))
        fast = torch.from_numpy(scorer.prepare(load_reduced(path, scorer.decode_side))[None])
        fast = ((fast.permute(0, 3, 1, 2).float() - scorer.mean) / scorer.std)[0]
        assert fast.shape == reference.shape
        assert (fast - reference).abs().mean() < tolerance, suffix
