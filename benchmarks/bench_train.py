"""Benchmark: dataset export throughput and training-step throughput with and without cached latents.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py [--images 32] [--size 256] [--resolution 64]
        [--steps 10] [--threads 1] [--kind sd15] [--device cpu|cuda]

Uses the tiny random pipelines of ``relightflow.testing.tiny_sd`` (the same code path as a real checkpoint).
Prints one JSON object: export rows/s, VAE latent caching rows/s, and training images/s from pixels and from
cached latents (mean over ``--steps`` timed steps after 2 warm-up steps).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def time_export(root: Path, images: int, size: int, resolution: int) -> tuple[Path, float]:
    from relightflow.dataset import export_split
    from relightflow.testing.tiny_sd import write_triplet_fixture

    up = write_triplet_fixture(root / "up", n_images=images, size=size)
    t0 = time.perf_counter()
    export_split(
        "train", up["selection"], up["pairs"], up["captions"], root / "ds", root / "s.json", root / "r.parquet",
        {"resolution": resolution, "rows_per_file": 500},
    )  # fmt: skip
    return root / "ds", images / (time.perf_counter() - t0)


def time_steps(cfg, paths, steps: int) -> float:
    """Images per second of full optimizer steps (forward, backward, AdamW, EMA), after 2 warm-up steps."""
    from relightflow.train.launch import trainer_for

    trainer = trainer_for(cfg, paths)
    trainer.setup()
    done, t0 = 0, 0.0
    while done < steps + 2:
        for batch in trainer.loader:
            if done == 2:
                t0 = time.perf_counter()
            trainer._micro_step(batch)
            if trainer.ema is not None:
                trainer.ema.step(trainer.params)
            done += 1
            if done >= steps + 2:
                break
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--size", type=int, default=256, help="side of the rendered source images (px)")
    p.add_argument("--resolution", type=int, default=64, help="training resolution (px)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kind", default="sd15", choices=["sd15", "sdxl"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from relightflow.testing.tiny_sd import overfit_config, save_tiny_pipeline
    from relightflow.train.config import TrainPaths
    from relightflow.train.latents import cache_latents

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, export_rate = time_export(root, args.images, args.size, args.resolution)
        base = save_tiny_pipeline(root / "base", args.kind, args.resolution, instruct=False)
        t0 = time.perf_counter()
        cache_latents(data, root / "latents", str(base), args.resolution)
        latent_rate = args.images / (time.perf_counter() - t0)
        cfg = overfit_config(
            base,
            args.kind,
            args.resolution,
            batch_size=args.batch_size,
            use_ema=True,
            num_validation_images=0,
        )
        pixels = TrainPaths(train_data=str(data), output_dir=str(root / "m1"), work_dir=str(root / "w1"))
        latents = TrainPaths(
            train_data=str(data),
            latents=str(root / "latents"),
            output_dir=str(root / "m2"),
            work_dir=str(root / "w2"),
        )
        result = {
            "kind": args.kind,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "threads": args.threads,
            "images": args.images,
            "source_size": args.size,
            "resolution": args.resolution,
            "batch_size": args.batch_size,
            "export_rows_per_s": round(export_rate, 2),
            "cache_latents_rows_per_s": round(latent_rate, 2),
            "train_images_per_s_pixels": round(time_steps(cfg, pixels, args.steps), 2),
            "train_images_per_s_cached_latents": round(time_steps(cfg, latents, args.steps), 2),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
