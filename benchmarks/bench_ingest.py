"""Ingest benchmarks: Snakemake dry-run time vs. number of images and shard size, and ingest throughput.

    .venv/bin/python benchmarks/bench_ingest.py dryrun --images 10000 70000 1000000 --shard-sizes 100 500 1000
    .venv/bin/python benchmarks/bench_ingest.py throughput --images 200

Dry run: the input is a list file of synthetic paths (the files need not exist: missing files become
rejects, the DAG is the same). Throughput: real 1024x1024 JPEG and PNG files; header probe + verify +
reduced decode per image, against a full decode (the ratio is what matters, not the absolute number).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def dryrun(n_images: int, shard_size: int, stages: list[str]) -> tuple[float, float, int]:
    """Return (first dry run s, second dry run s, number of shards)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "list.txt").write_text(
            "".join(f"photos/{i // 1000:04d}/{i:07d}.jpg\n" for i in range(n_images))
        )
        cfg = {"input": {"root": str(work), "list": str(work / "list.txt")}, "shards": {"size": shard_size},
               "stages": stages}  # fmt: skip
        (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), "--configfile",
               str(work / "cfg.yaml"), "-n", "-q", "--cores", "1"]  # fmt: skip
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        n_shards = len(list((work / "results/ingest/state/lists").glob("*.jsonl")))
    return times[0], times[1], n_shards


def throughput(n_images: int) -> None:
    import numpy as np
    from PIL import Image

    from relightflow.images import load_rgb
    from relightflow.ingest import probe_image

    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    base = np.asarray(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).resize((1024, 1024)))
    for fmt in ("jpg", "png"):
        paths = []
        for i in range(n_images):
            p = tmp / f"{i:04d}.{fmt}"
            options = {"quality": 90} if fmt == "jpg" else {"compress_level": 6}
            Image.fromarray(np.roll(base, i, axis=1)).save(p, **options)
            paths.append(p)
        for label, fn in (
            ("ingest probe (verify + reduced decode)", lambda p: probe_image(p, 10**9, 64, verify=True)),
            ("header only (verify=false)", lambda p: probe_image(p, 10**9, 64, verify=False)),
            ("full decode to RGB (baseline)", load_rgb),
        ):
            t0 = time.perf_counter()
            for p in paths:
                fn(p)
            dt = time.perf_counter() - t0
            print(f"{fmt.upper():4s} {label:40s} {n_images / dt:8.1f} images/s")
    shutil.rmtree(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dryrun")
    d.add_argument("--images", type=int, nargs="+", default=[10_000, 70_000])
    d.add_argument("--shard-sizes", type=int, nargs="+", default=[100, 500, 1000])
    d.add_argument("--stages", nargs="+", default=["ingest"])
    t = sub.add_parser("throughput")
    t.add_argument("--images", type=int, default=100)
    args = ap.parse_args()
    if args.cmd == "dryrun":
        print(f"{'images':>9} {'shard':>6} {'shards':>7} {'1st dry run s':>14} {'2nd dry run s':>14}")
        for n in args.images:
            for size in args.shard_sizes:
                first, second, shards = dryrun(n, size, args.stages)
                print(f"{n:9d} {size:6d} {shards:7d} {first:14.2f} {second:14.2f}")
    else:
        throughput(args.images)


if __name__ == "__main__":
    main()
