"""Instruction agreement measured as the instruction was made: captions written by the captions stage's own code
(measured with the subject mask), exported with their measurement (mask, size, version), evaluated with
systems whose lighting is known: the target reaches its own instruction, a system that follows the
instruction agrees, one that lights the other side disagrees, doing nothing is beaten beyond the interval."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from relightflow.captions.measure import WORK_SIDE
from relightflow.captions.run import MEASURE_VERSION, caption_row, load_item
from relightflow.config import section
from relightflow.dataset import encode_mask, export_split, load_split, write_webdataset
from relightflow.evaluate.data import iter_rows, iter_triplets, to_triplet
from relightflow.evaluate.instruction import instruction_following
from relightflow.evaluate.run import Evaluation
from relightflow.images import ImageError, load_mask, save_image
from relightflow.manifest import read_json, read_table, write_table
from relightflow.shards import Stats
from relightflow.testing import Scene, render_scene

SIZE, N = 128, 8
OTHER = {"left": "right", "right": "left"}


def relit(side: str, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A subject lit from ``side`` in front of a wall lit from the other side (a photo with a bright window
    behind), and the subject mask: the whole frame's light says the opposite of the subject's."""
    subject, mask, _ = render_scene(Scene(horizontal=side, size=size, seed=seed))
    wall, _, _ = render_scene(Scene(horizontal=OTHER[side], size=size, seed=seed))
    return np.where(mask[..., None], subject, wall), mask


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict:
    """Selection, pairs and captions tables of N test images; captions made by ``relightflow.captions.run``."""
    root = tmp_path_factory.mktemp("prov")
    cfg = section("captions", {"provider": "measured"})
    selection, pairs, captions = [], [], []
    for i in range(N):
        image_id, side = f"img{i:02d}", ("left", "right")[i % 2]
        target, mask = relit(side, SIZE, seed=i)
        degraded, _, _ = render_scene(Scene(horizontal="front", exposure=0.6, ambient=0.6, size=SIZE, seed=i))
        paths = {k: root / k / f"{image_id}.png" for k in ("images", "inputs", "masks")}
        save_image(paths["images"], target)
        save_image(paths["inputs"], degraded)
        save_image(paths["masks"], mask)
        selection.append({"image_id": image_id, "path": str(paths["images"]), "lighting_score": 1.0, "split": "test"})
        pairs.append({"image_id": image_id, "variant": 0, "input_path": str(paths["inputs"]),
                      "target_path": str(paths["images"]), "mask_path": str(paths["masks"]), "degradation": "flat",
                      "degradation_params": "{}", "seed": i, "split": "test"})  # fmt: skip
        item = load_item(image_id, str(paths["images"]), str(paths["masks"]), cfg["max_side"])
        captions.append(caption_row(item, cfg, f"measured/{MEASURE_VERSION}", None, False))
    tables = {"selection": root / "selection.parquet", "pairs": root / "pairs.parquet", "captions": root / "captions.parquet"}
    for name, rows in (("selection", selection), ("pairs", pairs), ("captions", captions)):
        write_table(tables[name], rows)
    return {"root": root, **tables}


def export(upstream: dict, out: Path, resolution: int | None) -> Path:
    split = out / "test"
    export_split("test", upstream["selection"], [upstream["pairs"]], [upstream["captions"]], split,
                 out / "stats.json", out / "rejects.parquet", {"resolution": resolution})  # fmt: skip
    return split


def test_captions_state_the_subjects_side_and_the_export_carries_their_measurement(upstream: dict, tmp_path: Path) -> None:
    captions = read_table(upstream["captions"])
    assert list(captions.light_direction) == ["left", "right"] * (N // 2)  # the subject's side, mask used
    assert captions.measured_mask_used.all() and (captions.measure_version == MEASURE_VERSION).all()
    split = export(upstream, tmp_path, 64)
    rows = list(load_split(split))
    assert len(rows) == N
    for row in rows:
        stored = load_mask(Path(upstream["root"]) / "masks" / f"{row['image_id']}.png")
        np.testing.assert_array_equal(np.asarray(row["subject_mask"].convert("L")) > 127, stored)  # exact
        assert row["measure_version"] == MEASURE_VERSION and row["measure_side"] == min(WORK_SIDE, SIZE)
        assert row["edited_image"].size == (64, 64)  # the images are exported smaller, the mask is not
    triplet = next(iter_triplets(split, 2))[0]
    assert triplet.mask.shape == (SIZE, SIZE) and "subject_mask" not in triplet.meta
    wrong = {**next(iter_rows(split, 1))[0], "subject_mask": {"bytes": encode_mask(np.ones((10, 30), bool)), "path": None}}
    with pytest.raises(ImageError, match="does not match the target"):
        to_triplet(wrong)  # a mask of another shape is a reject, never a silent misfit
    tars = write_webdataset(split, tmp_path / "wds")
    assert tars == N and any(p.suffix == ".tar" for p in (tmp_path / "wds").iterdir())


def test_a_caption_without_measurement_exports_empty_provenance(upstream: dict, tmp_path: Path) -> None:
    captions = read_table(upstream["captions"]).drop(columns=["mask_path", "measure_version"])
    write_table(tmp_path / "old_captions.parquet", captions)
    split = tmp_path / "old" / "test"
    export_split("test", upstream["selection"], [upstream["pairs"]], [tmp_path / "old_captions.parquet"], split,
                 tmp_path / "s.json", tmp_path / "r.parquet", {"resolution": 64})  # fmt: skip
    row = load_split(split)[0]
    assert row["subject_mask"] is None and row["measure_version"] is None and row["measure_side"] is None
    assert next(iter_triplets(split, 1))[0].mask is None


def _system(follow: bool):
    """A relighting system with known behaviour: lights the subject from the instruction's side (or the other)."""

    def relight(image: np.ndarray, instruction: str) -> np.ndarray:
        side = re.search(r"\b(left|right)\b", instruction).group(1)
        out, _ = relit(side if follow else OTHER[side], image.shape[0], seed=99)
        return out

    return relight


@pytest.mark.parametrize("resolution", [None, 64])
def test_target_reaches_its_instruction_and_systems_score_by_what_they_do(upstream: dict, tmp_path: Path,
                                                                          resolution: int | None) -> None:  # fmt: skip
    split = export(upstream, tmp_path / "data", resolution)
    names = {"metrics": "metrics.json", "table": "metrics.parquet", "html": "metrics.html", "plot": "metrics.png",
             "grid": "grid.png", "predictions": "predictions", "rejects": "rejects.parquet", "stats": "stats.json"}  # fmt: skip
    out = {k: str(tmp_path / v) for k, v in names.items()}
    cfg = section("evaluate", {"grid_rows": 2})
    evaluation = Evaluation({"follows": _system(True), "opposite": _system(False)}, cfg, out, "cpu")
    stats = Stats("evaluate", "test")
    evaluation.run(split, stats)
    summary = evaluation.write(stats, {"model": "oracles"}, seed=0)
    metrics = summary["metrics"]
    assert metrics["target"]["direction_agreement"] == 1.0 and metrics["target"]["direction_agreement_n"] == N
    assert metrics["follows"]["direction_agreement"] == 1.0 and metrics["opposite"]["direction_agreement"] == 0.0
    assert metrics["identity"]["direction_agreement"] == 0.0  # the front-lit input
    assert summary["comparisons"]["follows"]["direction_agreement"]["verdict"] == "better"
    assert summary["comparisons"]["opposite"]["direction_agreement"]["verdict"] == "no difference"
    assert summary["verdict"].startswith("follows vs identity") and "direction agreement +1 [+1, +1]" in summary["verdict"]
    assert summary["measurement"] == {"function": "relightflow.captions.measure.measure_lighting",
                                      "version": MEASURE_VERSION, "dataset_versions": {MEASURE_VERSION: N},
                                      "with_mask": N, "without_mask": 0, "version_mismatch": 0,
                                      "enlarged": 0 if resolution is None else N}  # fmt: skip
    table = read_table(out["table"])
    assert table.measured_with_mask.all()
    assert read_json(out["metrics"]) == summary
    html = Path(out["html"]).read_text()
    assert "target (ceiling)" in html and f"{N} triplets with the caption&#x27;s subject mask" in html
    # the same triplets measured the old way (whole frame): the target contradicts its own instruction
    row = next(iter(load_split(split)))
    old = instruction_following(np.asarray(row["edited_image"]), row["light_direction"], None)
    assert old["direction_ok"] is False
