"""Calibrate the pair quality gate (config ``pairs.quality``) on real data made offline, and time it.

    .venv/bin/python benchmarks/calibrate_pairs_quality.py --seeds 6 [--json out.json] [--sheet dropped.png]

Data: the demo's images (``relightflow.demo.materialize``: 12 scikit-image photos + 18 rendered scenes),
each segmented with the offline ``classical`` segmenter, flattened with the configured albedo and degraded
with every kind under ``seeds`` seeds, exactly as ``pair_image`` does. Printed:

* per kind, the percentiles of every measured column (``relightflow.pairs.quality.COLUMNS``), next to two
  references: the target itself (identity: what "no change" measures) and the albedo alone (what the
  flattening changes before any degradation);
* per kind, the share of variants the default bounds drop, per reason;
* the pairs nearest each bound (the cases to look at), and with ``--sheet`` a contact sheet of every
  dropped pair (target | input, labelled with its reason);
* CPU seconds (one thread) per image: measuring (target prepared once + one measure per variant) against
  albedo + degradation of the same variants.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from relightflow.config import section
from relightflow.demo import materialize
from relightflow.images import load_rgb
from relightflow.pairs.albedo import AlbedoEstimator
from relightflow.pairs.contact import write_contact_sheet
from relightflow.pairs.degrade import KINDS, degrade
from relightflow.pairs.filters import feather
from relightflow.pairs.quality import COLUMNS, gate_reason, measure, prepare
from relightflow.pairs.segment import ClassicalSegmenter, clean_mask
from relightflow.shards import reason_key

PERCENTILES = (5, 25, 50, 75, 95)


def demo_images(root: Path) -> list[Path]:
    materialize(root, broken=False)
    return sorted(p for p in root.rglob("*") if p.suffix in (".jpg", ".png"))


def measure_all(paths: list[Path], seeds: int, cfg: dict) -> tuple[pd.DataFrame, dict[str, float], dict]:
    """One row per (image, kind, seed) plus identity / albedo references; CPU seconds; pixels of drops."""
    albedo, segmenter, side = AlbedoEstimator(cfg), ClassicalSegmenter(), cfg["quality"]["side"]
    rows, cost, pixels = [], {"measure": 0.0, "pairs": 0.0, "images": 0}, {}
    for path in paths:
        image = load_rgb(path, max_side=cfg["max_side"])
        mask = (feather(clean_mask(segmenter.segment(image).mask), cfg["feather_px"]) * 255).astype(np.uint8)
        t0 = time.process_time()
        flat = albedo(image, mask)
        cost["pairs"] += time.process_time() - t0
        t0 = time.process_time()
        ref = prepare(image, mask, side)
        cost["measure"] += time.process_time() - t0
        name = f"{path.parent.name}/{path.stem}"
        rows.append({"image": name, "kind": "(identity)", "seed": -1, **measure(image, ref)})
        rows.append({"image": name, "kind": "(albedo only)", "seed": -1, **measure(flat, ref)})
        for kind in KINDS:
            for seed in range(seeds):
                t0 = time.process_time()
                out, params = degrade(flat, kind, seed, mask, background=cfg["background"], backdrop=image)
                t1 = time.process_time()
                change = measure(out, ref)
                cost["pairs"] += t1 - t0
                cost["measure"] += time.process_time() - t1
                reason = gate_reason(change, kind, cfg["quality"]["bounds"])
                pattern = params.get("occluder", {}).get("pattern", "")
                rows.append({"image": name, "kind": kind, "seed": seed, "pattern": pattern, **change,
                             "reason": reason})  # fmt: skip
                if reason:
                    pixels[(name, kind, seed)] = (image, out)
        cost["images"] += 1
    return pd.DataFrame(rows), cost, pixels


def distributions(frame: pd.DataFrame) -> pd.DataFrame:
    """Percentiles of every column per kind (references first)."""
    stats = frame.groupby("kind")[list(COLUMNS)].quantile([p / 100 for p in PERCENTILES]).unstack()
    order = ["(identity)", "(albedo only)", *KINDS]
    return stats.reindex([k for k in order if k in stats.index]).round(3)


def drop_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """Share of each kind's variants dropped, per reason class."""
    pairs = frame[frame["kind"].isin(KINDS)].copy()
    pairs["class"] = pairs["reason"].map(lambda r: reason_key(r) if r else "kept")
    return pd.crosstab(pairs["kind"], pairs["class"], normalize="index").round(3)


def write_sheet(path: str, frame: pd.DataFrame, pixels: dict) -> None:
    rows = []
    for r in frame[frame["reason"].fillna("") != ""].itertuples():
        target, out = pixels[(r.image, r.kind, r.seed)]
        label = f"{r.kind} s{r.seed} dE {r.delta_e_in:.1f} clip {r.clipped_in:.2f} ssim {r.ssim_in:.2f}"
        rows.append([(r.image.split("/")[-1], target), (label, out)])
    write_contact_sheet(path, rows, tile=192)


def cost_at(side: int, cfg: dict) -> dict[str, float]:
    """CPU seconds for one ``side``² photo (scikit-image astronaut, upscaled) with one variant, median over
    the kinds: albedo + degradation against measuring (prepare the target + one measure)."""
    from skimage import data

    image = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_CUBIC)
    mask = (feather(clean_mask(ClassicalSegmenter().segment(image).mask), 3) * 255).astype(np.uint8)
    albedo, pairs, gate = AlbedoEstimator(cfg), [], []
    for kind in KINDS:
        t0 = time.process_time()
        out, _ = degrade(albedo(image, mask), kind, 0, mask, backdrop=image)
        t1 = time.process_time()
        measure(out, prepare(image, mask, cfg["quality"]["side"]))
        pairs.append(t1 - t0)
        gate.append(time.process_time() - t1)
    out = {"side": side, "albedo_and_degrade_s": float(np.median(pairs)), "measure_s": float(np.median(gate))}
    return out | {"ratio": out["measure_s"] / out["albedo_and_degrade_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--max-side", type=int, default=1024, help="pairs.max_side (work resolution)")
    ap.add_argument("--cost-side", type=int, default=1024, help="also time one image of this size")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--sheet", help="contact sheet of the dropped pairs")
    ap.add_argument("--table", help="every measured pair (Parquet)")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    cfg = section("pairs", {"max_side": args.max_side})
    with tempfile.TemporaryDirectory() as tmp:
        frame, cost, pixels = measure_all(demo_images(Path(tmp)), args.seeds, cfg)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 50)
    dist, drops = distributions(frame), drop_rates(frame)
    print(f"{cost['images']} images x {len(KINDS)} kinds x {args.seeds} seeds; measured at {cfg['quality']['side']} px")
    for column in COLUMNS:
        print(f"\n{column} percentiles {PERCENTILES}:\n{dist[column].to_string()}")
    print(f"\nshare of variants dropped by the default bounds:\n{drops.to_string()}")
    pairs = frame[frame["kind"].isin(KINDS)]
    for column, ascending, title in (("delta_e_in", True, "lowest mean ΔE2000"), ("clipped_in", False, "most clipped"),
                                     ("ssim_in", True, "lowest SSIM")):  # fmt: skip
        near = pairs.sort_values(column, ascending=ascending).drop_duplicates(["kind", "image"])
        print(f"\n{title} per kind (three images each; * = dropped):")
        near = near.groupby("kind").head(3).sort_values(["kind", column], ascending=[True, ascending]).assign(dropped=lambda f: f["reason"].map(lambda r: "*" if r else ""))
        print(near[["kind", "image", "seed", "pattern", *COLUMNS, "dropped"]].to_string(index=False))
    n_variants = len(pairs)
    per_image = {"measure_s": cost["measure"] / cost["images"], "albedo_and_degrade_s": cost["pairs"] / cost["images"],
                 "variants_per_image": n_variants / cost["images"]}  # fmt: skip
    per_image["ratio"] = per_image["measure_s"] / per_image["albedo_and_degrade_s"]
    print(f"\nCPU seconds per image (one thread): {json.dumps({k: round(v, 4) for k, v in per_image.items()})}")
    at_side = cost_at(args.cost_side, cfg)
    print(f"one {args.cost_side}² image, one variant: {json.dumps({k: round(v, 4) for k, v in at_side.items()})}")
    if args.sheet:
        write_sheet(args.sheet, frame, pixels)
    if args.table:
        frame.to_parquet(args.table)
    if args.json:
        out = {"percentiles": {c: dist[c].to_dict(orient="index") for c in COLUMNS},
               "drop_rates": drops.to_dict(orient="index"), "cost_per_image": per_image, "cost_at_side": at_side,
               "seeds": args.seeds, "side": cfg["quality"]["side"], "bounds": cfg["quality"]["bounds"]}  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
