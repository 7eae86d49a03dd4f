"""Segmenters: the offline GrabCut on rendered scenes (ground-truth masks) and a real photo, mask cleaning,
and SAM2 / SAM3 built from their configs with random weights, loaded through the production loaders."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from relightflow.config import section
from relightflow.pairs.segment import (
    ClassicalSegmenter,
    FrameSegmenter,
    build_segmenter,
    clean_mask,
    detect_face,
    resolve_sam2_checkpoint,
    separability,
)
from relightflow.testing import Scene, render_scene

cv2.setNumThreads(1)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("horizontal", ["left", "front"])
def test_classical_matches_ground_truth_on_rendered_scenes(horizontal):
    image, truth, _ = render_scene(Scene(horizontal=horizontal, color_temperature="warm", size=256, seed=4))
    seg = ClassicalSegmenter().segment(image)
    assert seg.mask.shape == truth.shape and seg.prompt in ("face", "box")
    assert iou(clean_mask(seg.mask), truth) > 0.95
    assert 0.5 < seg.score <= 1.0


def test_classical_on_a_real_portrait_uses_the_face():
    image = data.astronaut()
    face = detect_face(image)
    assert face is not None
    x, y, w, h = face
    assert 150 < x + w / 2 < 280 and 60 < y + h / 2 < 180  # the astronaut's face
    seg = ClassicalSegmenter().segment(image)
    mask = clean_mask(seg.mask)
    assert seg.prompt == "face"
    assert mask[int(y + h / 2), int(x + w / 2)]  # the face is in
    assert not mask[:60, :60].any() and 0.15 < mask.mean() < 0.7  # a corner of the background is out


def test_classical_rejects_flat_and_tiny_images():
    flat = ClassicalSegmenter().segment(np.full((120, 90, 3), 77, np.uint8))
    assert not flat.mask.any() and flat.prompt == "uniform image"
    tiny = ClassicalSegmenter().segment(np.zeros((10, 7, 3), np.uint8))
    assert tiny.mask.shape == (10, 7) and not tiny.mask.any()


def test_no_face_on_noise():
    assert detect_face(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)) is None


def test_clean_mask_drops_specks_and_fills_holes():
    m = np.zeros((100, 100), bool)
    m[20:80, 20:80] = True
    m[40:50, 40:50] = False  # a hole
    m[2:4, 2:4] = True  # a speck
    m[85:99, 30:70] = True  # a second real part (torso under a head)
    out = clean_mask(m)
    assert out[45, 45] and not out[3, 3] and out[90, 50]
    assert not clean_mask(np.zeros((5, 5), bool)).any()


def test_separability_and_frame():
    image, truth, _ = render_scene(size=96)
    assert separability(image, truth) > separability(image, np.roll(truth, 40, axis=1))
    assert separability(image, np.ones_like(truth)) == 0.0
    full = FrameSegmenter().segment(image)
    assert full.mask.all() and full.score == 1.0
    assert isinstance(build_segmenter({"segmenter": "none"}), FrameSegmenter)
    with pytest.raises(ValueError, match="unknown pairs.segmenter"):
        build_segmenter({"segmenter": "sam4"})


def test_sam2_hub_ids_and_missing_checkpoints():
    with pytest.raises(FileNotFoundError, match="neither a file nor a known hub id"):
        resolve_sam2_checkpoint("no/such-model", None)
    with pytest.raises(ValueError, match="config is required"):
        resolve_sam2_checkpoint(__file__, None)


@pytest.fixture(scope="module")
def torch_one_thread():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def test_sam2_from_bundled_config_and_a_saved_checkpoint(tmp_path_factory, torch_one_thread):
    pytest.importorskip("sam2")
    from relightflow.testing.tiny_sam import SAM2_TEST_CONFIG, build_tiny_sam2_checkpoint

    ckpt = build_tiny_sam2_checkpoint(tmp_path_factory.mktemp("sam2") / "tiny.pt", image_size=256)
    cfg = section("pairs", segmenter="sam2", sam2={"config": SAM2_TEST_CONFIG, "checkpoint": ckpt, "image_size": 256})
    seg = build_segmenter(cfg)
    image = data.astronaut()
    box, point, prompt = seg.prompt(image)
    assert prompt == "face" and box[0] < point[0, 0] < box[2] and box[1] < point[0, 1] < box[3]
    out = seg.segment(image)
    assert out.mask.shape == image.shape[:2] and out.mask.dtype == bool and 0.0 <= out.score <= 1.0
    odd = seg.segment(np.ascontiguousarray(image[:301, :173]))  # no face there: the prior box prompts
    assert odd.mask.shape == (301, 173) and odd.prompt == "box"


def test_sam3_from_a_tiny_saved_model(tmp_path, torch_one_thread):
    from relightflow.testing.tiny_sam import build_tiny_sam3

    folder = build_tiny_sam3(tmp_path / "sam3")
    seg = build_segmenter(
        section("pairs", segmenter="sam3", sam3={"model": folder, "text_prompt": "person", "threshold": 0.0})
    )
    image = data.astronaut()[:300, :200]
    out = seg.segment(image)
    assert out.mask.shape == (300, 200) and out.prompt == "text:person" and 0.0 <= out.score <= 1.0
    strict = build_segmenter(section("pairs", segmenter="sam3", sam3={"model": folder, "threshold": 1.01}))
    none = strict.segment(image)  # nothing scores above 1: an empty mask, which the stage rejects
    assert not none.mask.any() and none.score == 0.0
