"""End to end evaluation of a tiny random InstructPix2Pix on an exported test split (real export, real
diffusers loading from a local folder), plus the runtimes table of benchmark files."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from relightflow.config import section
from relightflow.dataset import encode_image, export_split, features
from relightflow.evaluate import caption_examples, evaluate_split, write_runtimes
from relightflow.evaluate.metrics import psnr
from relightflow.evaluate.run import OUTPUTS
from relightflow.evaluate.runtimes import collect_runtimes
from relightflow.images import load_rgb
from relightflow.manifest import read_json, read_table
from relightflow.testing.tiny_sd import save_tiny_pipeline, write_triplet_fixture

CFG = section("evaluate", {"num_inference_steps": 2, "guidance_scale": 3.0, "image_guidance_scale": 1.5,
                           "resolution": 64, "batch_size": 2, "grid_rows": 3, "lpips": False})  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A tiny pipeline folder and a 4-row exported test split plus a file with a corrupt and a 4 px row."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    up = write_triplet_fixture(root / "up", n_images=4, size=64, splits=("test",))
    split = root / "dataset" / "test"
    export_split("test", up["selection"], up["pairs"], up["captions"], split, root / "s.json", root / "r.parquet",
                 {"resolution": 64, "rows_per_file": 3})  # fmt: skip
    good, tiny = encode_image(np.zeros((64, 64, 3), np.uint8)), encode_image(np.zeros((4, 4, 3), np.uint8))
    empty = {name: None for name in features()}
    broken = {**empty, "input_image": {"bytes": b"not an image", "path": None}, "edit_prompt": "warm light",
              "edited_image": {"bytes": good, "path": None}, "image_id": "broken", "variant": 0}  # fmt: skip
    small = {**broken, "input_image": {"bytes": tiny, "path": None}, "edited_image": {"bytes": tiny, "path": None},
             "image_id": "tiny"}  # fmt: skip
    table = pa.Table.from_pylist([broken, small], schema=features().arrow_schema)
    pq.write_table(table, split / "data-00009.parquet")
    return {"split": split, "model": save_tiny_pipeline(root / "model", "sd15", 64), "root": root}


def _outputs(d: Path) -> dict[str, str]:
    names = {"metrics": "metrics.json", "table": "metrics.parquet", "html": "metrics.html", "plot": "metrics.png",
             "grid": "grid.png", "predictions": "predictions", "rejects": "rejects.parquet", "stats": "stats.json"}  # fmt: skip
    assert set(names) == set(OUTPUTS)
    return {k: str(d / v) for k, v in names.items()}


def test_evaluate_split_outputs_metrics_and_rejects(assets: dict[str, Path], tmp_path: Path) -> None:
    out = _outputs(tmp_path / "evaluate")
    summary = evaluate_split(assets["split"], assets["model"], out, CFG, seed=7, device="cpu")
    assert summary["n_images"] == 4 and summary["n_rejected"] == 2
    assert summary["systems"] == ["model", "identity", "target"]
    model, identity = summary["metrics"]["model"], summary["metrics"]["identity"]
    assert {"psnr", "ssim", "direction_agreement", "temperature_agreement"} <= set(model)
    assert summary["lpips"] == {
        "enabled": False,
        "skipped_reason": "disabled in config (evaluate.lpips: false)",
    }
    assert summary["by_degradation"]["flat"]["identity"]["n"] == 4
    assert set(summary["by_light_direction"]) == {"left", "right"}
    # the real target agrees with its own measured caption: the ceiling of the agreement measure
    assert summary["metrics"]["target"]["direction_agreement"] == 1.0
    assert read_json(out["metrics"]) == summary

    table = read_table(out["table"])
    assert len(table) == 4 * 3 and set(table.system) == {"model", "identity", "target"}
    ident = table[table.system == "identity"].set_index("image_id")
    from relightflow.dataset import load_split

    row = next(r for r in load_split(assets["split"]) if r["image_id"] == "img0001")
    expected = psnr(np.asarray(row["input_image"]), np.asarray(row["edited_image"]))
    assert ident.loc["img0001", "psnr"] == pytest.approx(expected)
    assert identity["psnr"] == pytest.approx(ident["psnr"].mean(), abs=1e-4)

    preds = table[table.system == "model"]
    for path in preds.prediction_path:
        assert load_rgb(path).shape == (64, 64, 3)
    rejects = read_table(out["rejects"])
    assert list(rejects.image_id) == ["broken", "tiny"] and rejects.reason[0].startswith(("corrupt image", "not an image"))
    assert rejects.reason[1].startswith("scoring failed") and "at least 8 px" in rejects.reason[1]
    stats = read_json(out["stats"])
    assert (stats["n_in"], stats["n_kept"], stats["n_rejected"]) == (6, 4, 2)
    grid = load_rgb(out["grid"])
    assert grid.shape[1] > 3 * 150 and grid.shape[0] > 3 * 150  # 3 rows x (input | model | target)
    assert "identity" in Path(out["html"]).read_text() and load_rgb(out["plot"]).std() > 5


def test_seeded_predictions_and_baseline_model(assets: dict[str, Path], tmp_path: Path) -> None:
    cfg = {**CFG, "num_images": 2, "baselines": [{"name": "base2", "path": str(assets["model"])}]}
    a = evaluate_split(assets["split"], assets["model"], _outputs(tmp_path / "a"), cfg, seed=7, device="cpu")
    evaluate_split(
        assets["split"], assets["model"], _outputs(tmp_path / "b"), {**CFG, "num_images": 2}, 7, "cpu"
    )
    assert a["systems"] == ["model", "base2", "identity", "target"] and a["n_images"] == 2
    first = sorted((tmp_path / "a" / "predictions" / "model").iterdir())
    assert len(first) == 2
    for path in first:  # same seed -> same pixels
        np.testing.assert_array_equal(
            load_rgb(path), load_rgb(tmp_path / "b" / "predictions" / "model" / path.name)
        )
    # the baseline is a separate system with its own files; every system draws the same noise for an
    # image, so the same weights give the same pixels (models are compared under equal noise)
    base = load_rgb(tmp_path / "a" / "predictions" / "base2" / first[0].name)
    np.testing.assert_array_equal(base, load_rgb(first[0]))
    c = evaluate_split(assets["split"], assets["model"], _outputs(tmp_path / "c"), {**CFG, "num_images": 2}, 8, "cpu")
    assert c["seed"] == 8 and not np.array_equal(
        load_rgb(first[0]), load_rgb(tmp_path / "c" / "predictions" / "model" / first[0].name)
    )  # another seed, other noise


def test_runtimes_from_benchmark_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # benchmark patterns are relative to the working directory, like in a run
    bench = Path("results/benchmarks")
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = {"ingest/00000.tsv": 1.5, "ingest/00001.tsv": 2.5, "captions/caption/00000.tsv": 4.0,
             "captions/caption_summary.tsv": 0.5}  # fmt: skip
    for rel, s in files.items():
        (bench / rel).parent.mkdir(parents=True, exist_ok=True)
        (bench / rel).write_text(header + f"{s}\t0:00:0{int(s)}\t120.5\t1\t1\t1\t0\t0\t50\t{s / 2}\n")
    (bench / "broken.tsv").write_text("")
    patterns = {"ingest": "results/benchmarks/ingest/{shard}.tsv",
                "caption": "results/benchmarks/captions/caption/{shard}.tsv",
                "caption_summary": "results/benchmarks/captions/caption_summary.tsv"}  # fmt: skip
    jobs = collect_runtimes(bench, patterns)
    assert jobs.rule.tolist() == ["caption", "caption_summary", "ingest", "ingest"]
    assert jobs.job.tolist()[-1] == "ingest/00001"
    assert collect_runtimes(bench).rule.tolist() == ["captions", "captions", "ingest", "ingest"]  # by folder
    table = write_runtimes(bench, "jobs.parquet", "rt.html", "rt.png", patterns)
    assert table.loc["ingest", "jobs"] == 2 and table.loc["ingest", "total_s"] == 4.0
    assert table.index[0] in ("ingest", "caption") and table.loc["caption", "max_rss_mb"] == 120.5
    assert len(read_table("jobs.parquet")) == 4
    assert "4 jobs, 8.5 s" in Path("rt.html").read_text() and load_rgb("rt.png").std() > 5


def test_caption_examples_sheet_and_stats(assets: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "val"
    empty.mkdir()
    pq.write_table(pa.Table.from_pylist([], schema=features().arrow_schema), empty / "data-00000.parquet")
    caption_examples([assets["split"], empty], tmp_path / "ex.png", tmp_path / "ex.html", num_examples=3)
    sheet = load_rgb(tmp_path / "ex.png")
    assert sheet.shape[1] == 2 * 196 + 4 and sheet.shape[0] > 3 * 192  # 3 rows of input | target
    tables = html_tables((tmp_path / "ex.html").read_text())
    assert [r[:2] for r in tables[0][1:]] == [["test", "6"], ["val", "0"]]  # the broken row has a caption
    direction = {r[0]: r[1:] for r in tables[2][1:]}  # columns: test, val
    assert direction["left"] == ["2", "0"] and direction["right"] == ["2", "0"]


def html_tables(text: str) -> list[list[list[str]]]:
    """Cell texts of every <table> (rows of th/td strings), with the standard library parser."""

    class Parser(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tables: list[list[list[str]]] = []
            self.cell: list[str] | None = None

        def handle_starttag(self, tag, attrs) -> None:
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag) -> None:
            if tag in ("td", "th") and self.cell is not None:
                self.tables[-1][-1].append("".join(self.cell).strip())
                self.cell = None

        def handle_data(self, data) -> None:
            if self.cell is not None:
                self.cell.append(data)

    parser = Parser()
    parser.feed(text)
    return parser.tables


def test_flux_kontext_pipeline_and_lora_folder(assets: dict[str, Path], tmp_path: Path) -> None:
    """A full Kontext pipeline folder and a LoRA folder (as the Flux trainer writes it) both evaluate."""
    from peft import LoraConfig

    from relightflow.inference import LORA_WEIGHTS, pipeline_settings, write_settings
    from relightflow.testing.tiny_flux import build_tiny_flux_kontext, save_tiny_flux_kontext
    from relightflow.train.flux_kontext import save_lora

    base = save_tiny_flux_kontext(tmp_path / "kontext")
    pipe = build_tiny_flux_kontext()
    pipe.transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=["to_q", "to_k"]))
    save_lora(tmp_path / "lora", pipe.transformer)
    write_settings(tmp_path / "lora", pipeline_settings(pipe, base_model=str(base), lora_weights=LORA_WEIGHTS,
                                                        num_inference_steps=2, resolution=64))  # fmt: skip
    cfg = {**CFG, "num_images": 1, "guidance_scale": 2.5}
    for name, model in (("full", base), ("lora", tmp_path / "lora")):
        summary = evaluate_split(assets["split"], model, _outputs(tmp_path / name), cfg, seed=7, device="cpu")
        assert summary["n_images"] == 1 and summary["n_rejected"] == 0
    full, lora = (sorted((tmp_path / n / "predictions" / "model").iterdir()) for n in ("full", "lora"))
    assert [p.name for p in full] == [p.name for p in lora]
    assert not np.array_equal(load_rgb(full[0]), load_rgb(lora[0]))  # the LoRA changes the output


def test_empty_split_still_writes_every_output(assets: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "test"
    empty.mkdir()
    pq.write_table(pa.Table.from_pylist([], schema=features().arrow_schema), empty / "data-00000.parquet")
    out = _outputs(tmp_path / "evaluate")
    summary = evaluate_split(empty, assets["model"], out, CFG, seed=7, device="cpu")
    assert summary["n_images"] == 0 and summary["metrics"] == {}
    assert all(Path(p).exists() for p in out.values())
    assert read_json(out["stats"])["n_in"] == 0 and len(read_table(out["table"])) == 0
