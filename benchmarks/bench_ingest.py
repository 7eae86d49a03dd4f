"""Ingest benchmarks: Snakemake dry-run time vs. number of images and shard size, and ingest throughput.

    .venv/bin/python benchmarks/bench_ingest.py dryrun            # 700 / 70k / 1M images, all stages
    .venv/bin/python benchmarks/bench_ingest.py dryrun --images 70000 --shard-sizes 100 500 1000
    .venv/bin/python benchmarks/bench_ingest.py throughput --images 200

Dry run: the input is a list file of synthetic paths (the files need not exist: missing files become
rejects, the DAG is the same). Each row: a first dry run (lists the input, writes the shard plan) and a
second one (plan unchanged), wall and CPU seconds, and the CPU of our own parse-time part
(``relightflow.workflow.plan``: listing + shard state) against the rest, which is Snakemake's (start-up,
parsing, DAG). Read CPU seconds when the machine is shared: wall time then measures the neighbours. Throughput: real 1024x1024 JPEG and PNG files; header probe + verify +
reduced decode per image, against a full decode (the ratio is what matters, not the absolute number).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dryrun(n_images: int, shard_size: int, stages: list[str]) -> dict[str, float]:
    """Wall and CPU seconds of a first and a second ``snakemake -n``, and of our own part (``plan``)."""
    from relightflow import config, workflow

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "list.txt").write_text("".join(f"photos/{i // 1000:04d}/{i:07d}.jpg\n" for i in range(n_images)))
        cfg = {"input": {"root": str(work), "list": str(work / "list.txt")}, "shards": {"size": shard_size},
               "stages": stages}  # fmt: skip
        (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), "--configfile",
               str(work / "cfg.yaml"), "-n", "-q", "--cores", "1"]  # fmt: skip
        out: dict[str, float] = {}
        for run in ("first", "second"):
            t0, c0 = time.perf_counter(), _child_cpu()
            subprocess.run(cmd, check=True, capture_output=True)
            out[f"{run}_wall"], out[f"{run}_cpu"] = time.perf_counter() - t0, _child_cpu() - c0
        full = config.validate(config.merge(yaml.safe_load((REPO / "config.yaml").read_text()), cfg))
        t0 = time.process_time()
        out["shards"] = len(workflow.plan(full, state_dir=str(work / "results/ingest/state")))
        out["plan_cpu"] = time.process_time() - t0
    return out


def startup() -> float:
    """CPU seconds of ``snakemake --version``: imports and plugins, the floor of any dry run."""
    c0 = _child_cpu()
    subprocess.run([SNAKEMAKE, "--version"], check=True, capture_output=True)
    return _child_cpu() - c0


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
    d.add_argument("--images", type=int, nargs="+", default=[700, 70_000, 1_000_000])
    d.add_argument("--shard-sizes", type=int, nargs="+", default=[500])
    d.add_argument("--stages", nargs="+", default=["ingest", "filter", "pairs", "captions", "dataset", "train",
                                                   "evaluate"])  # fmt: skip
    t = sub.add_parser("throughput")
    t.add_argument("--images", type=int, default=100)
    args = ap.parse_args()
    if args.cmd == "dryrun":
        floor = startup()
        print(f"snakemake --version (imports, plugins): {floor:.2f} s CPU\n")
        print(f"{'images':>9} {'shard':>6} {'shards':>7} {'1st wall':>9} {'1st cpu':>8} {'2nd wall':>9} "
              f"{'2nd cpu':>8} {'plan cpu':>9} {'snakemake cpu':>14}")  # fmt: skip
        for n in args.images:
            for size in args.shard_sizes:
                r = dryrun(n, size, args.stages)
                print(f"{n:9d} {size:6d} {r['shards']:7.0f} {r['first_wall']:9.2f} {r['first_cpu']:8.2f} "
                      f"{r['second_wall']:9.2f} {r['second_cpu']:8.2f} {r['plan_cpu']:9.2f} "
                      f"{r['second_cpu'] - r['plan_cpu']:14.2f}")  # fmt: skip
    else:
        throughput(args.images)


if __name__ == "__main__":
    main()
