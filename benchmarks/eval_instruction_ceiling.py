"""Is instruction agreement a measure one can believe? The target row (the real target re-measured against its
own instruction) is its ceiling; target / identity / model agreement with their intervals, on a run of the
workflow, and how long evaluate takes.

Usage (CPU, offline; PYTHONPATH=src):

  # 1. a bigger input set: rendered scenes with known lighting + crops of scikit-image photos
  python benchmarks/eval_instruction_ceiling.py inputs --out /tmp/big/images --n 400
  # 2. the workflow up to evaluate with the demo profile's offline backends (short training)
  python benchmarks/eval_instruction_ceiling.py run --images /tmp/big/images --work /tmp/big/work
  # 3. re-export the test split at a resolution and evaluate it (agreement with intervals, seconds)
  python benchmarks/eval_instruction_ceiling.py evaluate --work /tmp/big/work --resolution 64 --out /tmp/big/e64
  # 4. old vs new measuring and summary seconds (per image / per summary) on that split
  python benchmarks/eval_instruction_ceiling.py timing --out /tmp/big/e64
  # 5. the figure: target / model / identity agreement of several evaluations (old ones too)
  python benchmarks/eval_instruction_ceiling.py figure --out fig.png --run "before=/tmp/old/metrics.parquet" \
      --run "after=/tmp/big/e64/metrics.parquet"

``evaluate`` re-exports the test split from the run's pairs and captions (so the dataset carries the
caption's measurement: mask, size, version), evaluates it with the run's model and prints one line per
system: direction / temperature agreement, 95 % interval and n, plus the verdict line and the seconds.
``--unmasked`` drops the provenance columns (the old way: every image measured whole, at export size).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def make_inputs(out: Path, n: int, seed: int = 0, photo_share: float = 0.35) -> int:
    """``n`` images under ``out``: rendered scenes (random light side, height, colour, exposure, size, aspect)
    and random crops of the scikit-image photos (flipped, colour-balanced, exposed)."""
    import cv2

    from relightflow.demo import SKIMAGE_PHOTOS, _as_rgb, _skimage_photo
    from relightflow.images import save_image
    from relightflow.testing import Scene, render_scene

    rng = np.random.default_rng(seed)
    photos = [_as_rgb(_skimage_photo(name)) for name in SKIMAGE_PHOTOS]
    photos = [p for p in photos if p.std(axis=2).mean() > 2]  # colour photos only
    for i in range(n):
        if rng.random() < photo_share:
            photo = photos[rng.integers(len(photos))]
            h, w = photo.shape[:2]
            ch, cw = (int(s * rng.uniform(0.45, 0.9)) for s in (h, w))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            image = photo[y : y + ch, x : x + cw]
            image = image[:, ::-1] if rng.random() < 0.5 else image
            gain = np.array([1 + rng.uniform(-0.25, 0.25), 1.0, 1 + rng.uniform(-0.25, 0.25)]) * rng.uniform(0.7, 1.2)
            image = np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)
            name = f"photos/{i:04d}.jpg"
        else:
            scene = Scene(horizontal=str(rng.choice(["left", "front", "right"])),
                          vertical=str(rng.choice(["above", "level", "below"])),
                          color_temperature=str(rng.choice(["warm", "neutral", "cool"])),
                          exposure=float(rng.uniform(0.7, 1.25)), ambient=float(rng.uniform(0.15, 0.4)),
                          size=int(rng.integers(192, 320)), seed=int(seed * 100_000 + i))  # fmt: skip
            image = render_scene(scene)[0]
            keep = int(image.shape[1] * rng.uniform(0.75, 1.0))  # some portrait aspect
            left = (image.shape[1] - keep) // 2
            image = image[:, left : left + keep]
            name = f"scenes/{i:04d}_{scene.horizontal}_{scene.vertical}_{scene.color_temperature}.png"
        if max(image.shape[:2]) > 480:
            scale = 480 / max(image.shape[:2])
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        save_image(out / name, np.ascontiguousarray(image), quality=92)
    return n


def run_workflow(images: Path, work: Path, cores: int = 2, max_steps: int = 24) -> float:
    """The workflow up to evaluate with the demo profile on ``images``; returns the seconds it took."""
    work.mkdir(parents=True, exist_ok=True)
    overlay = work / "benchmark_config.yaml"  # over the demo profile's config: these images, larger shards
    overlay.write_text(json.dumps({"input": {"root": str(images)}, "demo": {"materialize": False},
                                   "shards": {"size": 50}, "train": {"max_steps": max_steps}}))  # fmt: skip
    cmd = [str(SNAKEMAKE), "--profile", str(REPO / "profiles/demo"), "--snakefile", str(REPO / "Snakefile"),
           "--configfile", str(REPO / "profiles/demo/demo.yaml"), str(overlay), "--directory", str(work),
           "--cores", str(cores), "--", "results/evaluate/metrics.json"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - t0


def export_test(work: Path, out: Path, resolution: int | None, unmasked: bool = False) -> Path:
    """Re-export the run's test split at ``resolution`` (``unmasked``: without the measurement columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from relightflow.dataset import export_split

    work, out = work.resolve(), out.resolve()
    results = work / "results"
    shards = sorted(p.stem for p in (results / "captions").glob("[0-9]*.parquet"))
    split = out / "dataset" / "test"
    with contextlib.chdir(work):  # the manifests' paths are relative to the run's working directory
        export_split("test", results / "filter/selection.parquet",
                     [results / "pairs/manifests" / f"{s}.parquet" for s in shards],
                     [results / "captions" / f"{s}.parquet" for s in shards], split, out / "export_stats.json",
                     out / "export_rejects.parquet", {"resolution": resolution})  # fmt: skip
    if unmasked:  # the columns emptied: every image measured whole, at the size it is given
        for f in split.glob("data-*.parquet"):
            table = pq.read_table(f)
            for col in ("subject_mask", "measure_side", "measure_version"):
                i = table.schema.get_field_index(col)
                table = table.set_column(i, table.schema.field(i), pa.nulls(len(table), table.schema.field(i).type))
            pq.write_table(table, f)
    return split


def evaluate(work: Path, out: Path, resolution: int | None, unmasked: bool = False, seed: int = 0) -> dict:
    """Evaluate the run's model on its re-exported test split; the summary with ``seconds`` added."""
    from relightflow.config import section
    from relightflow.evaluate import evaluate_split

    split = export_test(work, out, resolution, unmasked)
    names = {"metrics": "metrics.json", "table": "metrics.parquet", "html": "metrics.html", "plot": "metrics.png",
             "grid": "grid.png", "predictions": "predictions", "rejects": "rejects.parquet", "stats": "stats.json"}  # fmt: skip
    cfg = section("evaluate", {"resolution": 64, "num_inference_steps": 4})
    t0 = time.perf_counter()
    summary = evaluate_split(split, work / "results/train/model", {k: str(out / v) for k, v in names.items()},
                             cfg, seed, "cpu")  # fmt: skip
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def agreements(table_path: Path, seed: int = 0) -> dict[str, dict[str, tuple[float, float, float, int]]]:
    """Per system and agreement: (mean, low, high, n) recomputed from a per-image ``metrics.parquet`` (of this
    evaluation or an older one), with the same bootstrap as ``metrics.json``."""
    from relightflow.evaluate.intervals import bootstrap_mean, seeded
    from relightflow.evaluate.summary import numeric
    from relightflow.manifest import read_table

    frame = numeric(read_table(table_path))
    out: dict[str, dict[str, tuple[float, float, float, int]]] = {}
    for system, rows in frame.groupby("system", sort=False):
        for col, name in (("direction_ok", "direction"), ("temperature_ok", "temperature")):
            est = bootstrap_mean(rows[col], rows["unit"], seeded(seed, str(system), f"{name}_agreement"))
            if est is not None:
                low, high = (est.mean, est.mean) if est.low is None else (est.low, est.high)
                out.setdefault(str(system), {})[name] = (est.mean, low, high, est.n)
    return out


def figure(runs: dict[str, Path], path: Path) -> list[str]:
    """Target / model / identity agreement with intervals, one group of bars per run; the lines printed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {label: agreements(table) for label, table in runs.items()}
    systems = ("target", "model", "identity")
    fig, axes = plt.subplots(1, 2, figsize=(5 + 1.6 * len(runs), 4.2), constrained_layout=True, sharey=True)
    lines = []
    for ax, attribute in zip(axes, ("direction", "temperature"), strict=True):
        width = 0.8 / len(systems)
        for i, system in enumerate(systems):
            values = [results[label].get(system, {}).get(attribute, (np.nan, np.nan, np.nan, 0)) for label in runs]
            means = np.array([v[0] for v in values])
            err = np.array([[v[0] - v[1], v[2] - v[0]] for v in values]).T
            x = np.arange(len(runs)) + (i - 1) * width
            ax.bar(x, means, width, yerr=err, capsize=3, label="target (ceiling)" if system == "target" else system)
            lines += [f"{label:>28} {attribute:>11} {system:>8}: {v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}] n={v[3]}"
                      for label, v in zip(runs, values, strict=True)]  # fmt: skip
        ax.set_xticks(np.arange(len(runs)), list(runs), rotation=15, fontsize=8)
        ax.set_title(f"{attribute} agreement (95 % interval)")
        ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return sorted(lines, key=lambda line: line.split(":")[0].split()[1:])


def timing(split: Path, table_path: Path, repeats: int = 3) -> dict[str, float]:
    """Seconds of the parts of scoring that this evaluation changed, old way vs new, on an exported split:
    measuring one image whole at export size vs with the caption's mask at its size, and the plain means
    vs the summary with bootstrap intervals and paired comparisons (``metrics.parquet`` of that split)."""
    from relightflow.evaluate.data import iter_triplets
    from relightflow.evaluate.instruction import Measurement
    from relightflow.evaluate.summary import METRICS, summarize
    from relightflow.manifest import read_table

    triplets = [t for batch in iter_triplets(split, 16) for t in batch]
    ways = {"measure_whole_at_export_size": lambda t: Measurement(),
            "measure_with_mask_at_caption_size": lambda t: Measurement(t.mask, t.meta.get("measure_side"))}  # fmt: skip
    out: dict[str, float] = {"triplets": len(triplets)}
    for name, way in ways.items():
        t0 = time.perf_counter()
        for _ in range(repeats):
            for t in triplets:
                way(t)(t.target)
        out[name] = (time.perf_counter() - t0) / (repeats * len(triplets))
    frame = read_table(table_path)
    systems = list(dict.fromkeys(frame["system"]))
    t0 = time.perf_counter()
    frame.groupby("system")[[c for c in METRICS if c in frame]].agg(lambda c: c.astype(float).mean())
    out["plain_means"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    summarize(frame, systems)
    out["summary_with_intervals"] = time.perf_counter() - t0
    return {k: round(v, 4) for k, v in out.items()}


def agreement_lines(summary: dict) -> list[str]:
    """One line per system: direction and temperature agreement with interval and n."""
    lines = []
    for system, cell in summary["metrics"].items():
        parts = []
        for m in ("direction_agreement", "temperature_agreement"):
            if m in cell:
                lo, hi = cell[f"{m}_ci"] or (float("nan"), float("nan"))
                parts.append(f"{m.split('_')[0]} {cell[m]:.3f} [{lo:.3f}, {hi:.3f}] n={cell[f'{m}_n']}")
        lines.append(f"{system:>9}: " + "; ".join(parts))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inputs")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("run")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=24)
    p = sub.add_parser("evaluate")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resolution", type=int, default=None, help="export resolution (shorter side); none: as stored")
    p.add_argument("--unmasked", action="store_true", help="drop the measurement provenance columns")
    p.add_argument("--json", type=Path, default=None)
    p = sub.add_parser("timing", help="old vs new measuring and summary seconds on an evaluated split")
    p.add_argument("--out", type=Path, required=True, help="the --out folder of an `evaluate` run")
    p = sub.add_parser("figure", help="agreement with intervals of several evaluations, from their metrics.parquet")
    p.add_argument("--run", action="append", required=True, metavar="LABEL=METRICS.PARQUET")
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "inputs":
        print(f"{make_inputs(args.out, args.n, args.seed)} images under {args.out}")
    elif args.command == "timing":
        print(json.dumps(timing(args.out / "dataset/test", args.out / "metrics.parquet")))
    elif args.command == "figure":
        runs = {label: Path(path) for label, path in (item.split("=", 1) for item in args.run)}
        print("\n".join(figure(runs, args.out)))
    elif args.command == "run":
        print(f"workflow: {run_workflow(args.images, args.work, args.cores, args.max_steps):.0f} s")
    else:
        summary = evaluate(args.work, args.out, args.resolution, args.unmasked)
        print("\n".join(agreement_lines(summary)))
        print(summary.get("verdict", ""))
        print(f"evaluate: {summary['seconds']} s for {summary['n_images']} triplets "
              f"({json.dumps(summary['seconds_per_image'])} s per triplet)")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
