"""The survival table and plots from fake per-stage stats, without a workflow: every stage in pipeline
order, survival and share of the ingested images right, reasons ranked, the gate's drops per kind."""

from __future__ import annotations

import cv2
import pandas as pd
import pytest

from relightflow.config import section
from relightflow.manifest import read_table, write_json, write_table
from relightflow.pairs.run import PAIR_COLUMNS
from relightflow.shards import Stats, gather
from relightflow.survival import STAGE_ORDER, gate_table, read_stages, survival_table, write_survival


def _stats(stage: str, shard: str, n_in: int, reasons: dict[str, int] | None = None, **counts) -> Stats:
    s = Stats(stage, shard, n_in=n_in)
    for reason, n in (reasons or {}).items():
        for _ in range(n):
            s.reject(f"{reason}: detail")
    s.n_kept = n_in - s.n_rejected
    s.counts.update(counts)
    return s


def _gathered(tmp_path, name: str, shards: list[Stats]) -> str:
    """A stage's summary as its summary rule writes it (relightflow.shards.gather)."""
    paths = []
    for s in shards:
        paths.append(tmp_path / f"{name}_{s.stage}_{s.shard}.json")
        s.write(paths[-1])
    out = tmp_path / f"{name}.json"
    gather(paths, [], out, tmp_path / f"{name}_rejects.parquet")
    return str(out)


@pytest.fixture
def stats_files(tmp_path):
    """Fake stats of a run: 40 images listed, 36 ingested, 30 selected, 28 segmented, 25 paired."""
    ingest = _gathered(tmp_path, "ingest", [_stats("ingest", "0", 20, {"corrupt image": 3}),
                                            _stats("ingest", "1", 20, {"not an image": 1})])  # fmt: skip
    scores = []  # the lighting scores have no gather: their per-shard files are read as they are
    for shard, n in (("0", 17), ("1", 19)):
        scores.append(tmp_path / f"filter_{shard}.json")
        _stats("filter", shard, n).write(scores[-1])
    select = tmp_path / "select.json"
    write_json(select, {"n_scored": 36, "stages": {"select": _stats("select", "all", 36, {"below the cut": 6}).to_dict()}})
    pairs = _gathered(tmp_path, "pairs", [
        _stats("segment", "0", 14, {"empty mask": 1}), _stats("segment", "1", 16, {"mask too small": 1}),
        _stats("degrade", "0", 13, {"too little change": 2}, kinds={"soft_shading": 6, "low_key": 5},
               dropped={"too little change": {"soft_shading": 3}}, variants=14),
        _stats("degrade", "1", 15, {"subject wrecked": 1}, kinds={"soft_shading": 9, "low_key": 5},
               dropped={"subject wrecked": {"low_key": 2}, "too little change": {"soft_shading": 1}}, variants=17),
    ])  # fmt: skip
    captions = _gathered(tmp_path, "captions", [_stats("captions", "0", 14), _stats("captions", "1", 16)])
    dataset = _gathered(tmp_path, "dataset", [_stats("dataset", "train", 20), _stats("dataset", "test", 5)])
    return [ingest, *map(str, scores), str(select), pairs, captions, dataset]


def test_survival_table_from_gathered_stats(stats_files):
    stages = read_stages(stats_files)
    for s in stages.values():  # every stage adds up
        assert s.n_in == s.n_kept + s.n_rejected
    table = survival_table(stages).set_index("stage")
    assert list(table.index) == list(STAGE_ORDER)
    assert table["n_in"].to_dict() == {"ingest": 40, "filter": 36, "select": 36, "segment": 30, "degrade": 28,
                                       "captions": 30, "dataset": 25}  # fmt: skip
    assert table["n_kept"].to_dict() == {"ingest": 36, "filter": 36, "select": 30, "segment": 28, "degrade": 25,
                                         "captions": 30, "dataset": 25}  # fmt: skip
    assert table.loc["ingest", "survival"] == 0.9 and table.loc["degrade", "survival"] == round(25 / 28, 4)
    assert table.loc["degrade", "of_ingested"] == 25 / 40 and table.loc["select", "of_ingested"] == 0.75
    assert table.loc["dataset", "unit"] == "pairs" and pd.isna(table.loc["dataset", "of_ingested"])
    assert table.loc["ingest", "reasons"] == "corrupt image: 3, not an image: 1"
    assert table.loc["degrade", "reasons"] == "too little change: 2, subject wrecked: 1"


def test_a_partial_run_and_unknown_files(tmp_path, stats_files):
    write_json(tmp_path / "other.json", {"n_images": 3})  # not a stats file: ignored
    table = survival_table(read_stages([stats_files[0], str(tmp_path / "other.json")]))
    assert list(table["stage"]) == ["ingest"] and table["of_ingested"][0] == 0.9
    assert survival_table({}).empty


def test_write_survival_outputs(tmp_path, stats_files):
    manifest = tmp_path / "pairs.parquet"
    rows = [{"image_id": f"i{i}", "variant": 0, "degradation": kind, "delta_e_in": de, "delta_e_out": 0.1,
             "ssim_in": ss, "ssim_out": 0.99, "clipped_in": cl}
            for i, (kind, de, ss, cl) in enumerate([("soft_shading", 6.5, 0.9, 0.0), ("soft_shading", 9.0, 0.85, 0.0),
                                                    ("low_key", 35.0, 0.25, 0.2)])]  # fmt: skip
    write_table(manifest, rows, columns=PAIR_COLUMNS)
    outputs = {k: tmp_path / f"out.{k}" for k in ("html", "table")} | {
        k: tmp_path / f"{k}.png" for k in ("plot", "changes")}  # fmt: skip
    table = write_survival(stats_files, [manifest], outputs, section("pairs")["quality"]["bounds"])
    assert read_table(outputs["table"]).equals(table)
    html = outputs["html"].read_text()
    for stage in STAGE_ORDER:
        assert f"<td>{stage}</td>" in html
    assert "<th>subject wrecked</th>" in html and "<th>too little change</th>" in html
    gate = gate_table(read_stages(stats_files)["degrade"])  # kept and dropped per kind: the degrade counts
    assert gate.loc["soft_shading", "kept"] == 15 and gate.loc["soft_shading", "too little change"] == 4
    assert gate.loc["low_key", "subject wrecked"] == 2 and gate.loc["low_key", "too little change"] == 0
    assert gate.loc["low_key", "dropped_share"] == round(2 / 12, 3)
    assert "<th>low_key</th>" in html
    for name in ("plot", "changes"):
        image = cv2.imread(str(outputs[name]))
        assert image is not None and image.std() > 5  # drawn, not blank
    empty = {k: tmp_path / f"empty_{v.name}" for k, v in outputs.items()}
    write_survival([], [], empty)  # no stats, no pairs: still a table and two (empty) plots
    assert read_table(empty["table"]).empty and cv2.imread(str(empty["changes"])) is not None


def test_gate_table_without_drops():
    """A run whose gate dropped nothing (or was disabled) still gets its per-kind table."""
    from relightflow.shards import Stats
    from relightflow.survival import gate_table

    table = gate_table(Stats("degrade", counts={"kinds": {"flat": 3, "color_cast": 2}}))
    assert table["kept"].to_dict() == {"color_cast": 2, "flat": 3} and (table["dropped_share"] == 0).all()
