"""Filter scoring data path: images/s at 1024² JPEG and PNG, in one run, against two references.

    .venv/bin/python benchmarks/bench_filter.py --images 256 --workers 2

* naive: the predecessor's loop, one image at a time in one process: ``PIL.Image.open -> convert("RGB")
  -> open_clip preprocess``, then the batch through the model;
* decode-only: the same number of DataLoader workers doing nothing but the reduced-size decode (PIL
  ``draft`` for JPEG, a full decode for PNG): the ceiling;
* data path: ``relightflow.filter`` as the rule runs it (workers decode at reduced size, resize and crop;
  the batch is normalised on the device and encoded in one call).

The model is a tiny random open_clip model at 224 px, so the model's cost does not hide the data path on
a CPU (on a GPU, ViT-B/L encode thousands of 224² images per second). Each case is also run without the
model (naive and data path): on a GPU node the model leaves the CPUs to the decoders, which is the
regime the data path is built for; on a small CPU box the model competes with the decode workers.
Figures: median images/s over interleaved rounds, and CPU ms per image (this process + its workers). Images: real photos (scikit-image)
upscaled to 1024², with noise so JPEG sizes are realistic.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from relightflow.filter import clip
from relightflow.filter.data import decode_reduced, iter_prepared
from relightflow.images import save_image
from relightflow.manifest import write_table
from relightflow.testing import tiny_clip

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "retina",
    "motorcycle_left",
    "cat",
)


def make_images(folder: Path, n_unique: int, fmt: str) -> list[str]:
    from skimage import data

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_unique):
        name = PHOTOS[i % len(PHOTOS)]
        img = getattr(data, name)() if name != "motorcycle_left" else data.stereo_motorcycle()[0]
        img = np.asarray(
            Image.fromarray(img[..., :3]).resize((1024, 1024), Image.Resampling.BICUBIC), np.float32
        )
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        path = folder / f"{fmt}_{i:03d}.{fmt}"
        save_image(path, img, quality=90)
        paths.append(str(path))
    return paths


def naive(paths: list[str], model, preprocess, batch_size: int) -> int:
    batch = []
    for path in paths:
        with Image.open(path) as img:
            batch.append(preprocess(img.convert("RGB")))
        if len(batch) == batch_size:
            if model is not None:
                with torch.inference_mode():
                    model.encode_image(torch.stack(batch))
            batch = []
    return len(paths)


class _DecodeOnly(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], side: int):
        self.paths, self.side = paths, side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return decode_reduced(self.paths[i], self.side).size


def decode_only(paths: list[str], side: int, batch_size: int, workers: int) -> int:
    """The same reduced decode in the same number of workers, and nothing else."""
    loader = torch.utils.data.DataLoader(
        _DecodeOnly(paths, side), batch_size=batch_size, num_workers=workers, collate_fn=list
    )
    return sum(len(batch) for batch in loader)


def data_path(
    manifest: Path, scorer: clip.ClipScorer, batch_size: int, workers: int, model: bool = True
) -> int:
    n = 0
    for batch in iter_prepared(
        manifest, scorer.prepare, scorer.decode_side, scorer.shape, batch_size, workers
    ):
        if model:
            scorer.score(batch.data)
        n += len(batch)
    return n


def measure(fn, *args) -> tuple[float, float]:
    """``(images/s wall, CPU ms per image)``; CPU counts this process and its finished children (workers)."""
    import resource

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    n = fn(*args)
    wall, used = time.perf_counter() - t0, cpu() - c0
    return n / wall, 1000.0 * used / n


def bench_format(fmt: str, tmp: Path, scorer, preprocess, args) -> dict[str, float]:
    files = make_images(tmp, args.unique, fmt)
    paths = [files[i % len(files)] for i in range(args.images)]
    manifest = tmp / f"{fmt}.parquet"
    rows = [{"image_id": str(i), "path": p, "width": 1024, "height": 1024} for i, p in enumerate(paths)]
    write_table(manifest, rows)
    bs, w = args.batch_size, args.workers
    cases = {
        "naive": (naive, paths, scorer.model, preprocess, bs),
        "naive_no_model": (naive, paths, None, preprocess, bs),
        "decode_only": (decode_only, paths, scorer.decode_side, bs, w),
        "data_path": (data_path, manifest, scorer, bs, w),
        "data_path_no_model": (data_path, manifest, scorer, bs, w, False),
    }
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for _ in range(args.rounds):  # interleaved rounds: a load change on a shared machine hits every case
        for name, (fn, *fn_args) in cases.items():
            runs[name].append(measure(fn, *fn_args))
    out = {}
    for name, values in runs.items():
        out[f"{name}_img_s"] = float(np.median([v[0] for v in values]))
        out[f"{name}_cpu_ms"] = float(np.median([v[1] for v in values]))
    out["speedup_vs_naive"] = out["data_path_img_s"] / out["naive_img_s"]
    out["fraction_of_decode_only"] = out["data_path_img_s"] / out["decode_only_img_s"]
    out["fraction_of_decode_only_no_model"] = out["data_path_no_model_img_s"] / out["decode_only_img_s"]
    out["speedup_vs_naive_no_model"] = out["data_path_no_model_img_s"] / out["naive_no_model_img_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="images per case (unique files cycled)")
    parser.add_argument("--unique", type=int, default=32, help="distinct files per format")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_filter_"))
    config, checkpoint = tiny_clip.save_tiny_clip(tmp / "model", "bench-clip", image_size=224, patch_size=32)
    scorer = clip.ClipScorer(
        {"model": config, "pretrained": checkpoint, "prompts": [["Bright photo.", "Dark photo."]]}
    )
    import open_clip

    _, _, preprocess = open_clip.create_model_and_transforms(
        clip.register_model(config), pretrained=checkpoint
    )
    results = {fmt: bench_format(fmt, tmp, scorer, preprocess, args) for fmt in ("jpg", "png")}
    for fmt, r in results.items():
        print(
            f"{fmt}: naive {r['naive_img_s']:.1f} img/s ({r['naive_cpu_ms']:.1f} CPU ms/img) | "
            f"decode-only {r['decode_only_img_s']:.1f} ({r['decode_only_cpu_ms']:.1f}) | "
            f"data path {r['data_path_img_s']:.1f} ({r['data_path_cpu_ms']:.1f}) = {r['speedup_vs_naive']:.1f}x naive, "
            f"{100 * r['fraction_of_decode_only']:.0f}% of decode-only | without the model "
            f"{r['data_path_no_model_img_s']:.1f} ({r['data_path_no_model_cpu_ms']:.1f}) = "
            f"{100 * r['fraction_of_decode_only_no_model']:.0f}% of decode-only, "
            f"{r['speedup_vs_naive_no_model']:.1f}x naive without the model "
            f"({r['naive_no_model_img_s']:.1f} img/s, {r['naive_no_model_cpu_ms']:.1f} CPU ms/img)"
        )
    print(
        f"({args.images} images per case, {args.workers} workers, batch {args.batch_size}, {args.rounds} rounds)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
