"""Pairs stage CPU cost and offline segmenter accuracy.

    .venv/bin/python benchmarks/bench_pairs.py --side 1024 --repeats 5 [--json out.json]

* seconds per image per core (one thread: ``cv2.setNumThreads(1)``) at ``side``² for the Retinex albedo
  (the default gradient-domain method, the multi-scale surround, and the predecessor's full-resolution
  multi-scale Retinex sigma 15/80/250 once, for the ratio) and each degradation kind (and each occluder pattern of ``cast_shadow``), median over ``repeats`` seeds, on a
  real photo (scikit-image astronaut, upscaled) with a classical mask; the goal is <= 0.3 s for albedo +
  one degradation;
* the offline ``classical`` segmenter (Haar face + GrabCut): IoU against the ground-truth masks of the 18
  rendered scenes of ``relightflow.testing.scene_grid`` and seconds per image.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import time

import cv2
import numpy as np
from eval_signals import multiscale_retinex

from relightflow.pairs.albedo import retinex_albedo8
from relightflow.pairs.degrade import KINDS, degrade
from relightflow.pairs.filters import feather
from relightflow.pairs.occluders import PATTERNS
from relightflow.pairs.segment import ClassicalSegmenter, clean_mask
from relightflow.testing import render_scene, scene_grid


def timed(fn, repeats: int) -> float:
    """Median CPU seconds (all threads of this process: the cost per core, insensitive to other load on a
    shared machine) of ``fn(i)`` over ``repeats`` calls, after one warm-up."""
    fn(repeats)
    times = []
    for i in range(repeats):
        t0 = time.process_time()
        fn(i)
        times.append(time.process_time() - t0)
    return statistics.median(times)


def cpu_costs(side: int, repeats: int) -> dict[str, float]:
    from skimage import data

    image = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_CUBIC)
    mask = (feather(clean_mask(ClassicalSegmenter().segment(image).mask), 3) * 255).astype(np.uint8)
    albedo = retinex_albedo8(image, mask)
    costs = {"albedo_retinex": timed(lambda i: retinex_albedo8(image, mask), repeats),
             "albedo_retinex_surround": timed(lambda i: retinex_albedo8(image, mask, method="surround"), repeats),
             "albedo_msr_15_80_250_fullres": timed(lambda i: multiscale_retinex(image), 1)}  # fmt: skip
    for kind in KINDS:
        costs[kind] = timed(lambda i, k=kind: degrade(albedo, k, i, mask, backdrop=image), repeats)
    for pattern in sorted(PATTERNS):
        costs[f"cast_shadow/{pattern}"] = timed(
            lambda i, p=pattern: degrade(albedo, "cast_shadow", i, mask, backdrop=image, pattern=p), repeats
        )
    costs["background_blur(low_key)"] = timed(
        lambda i: degrade(albedo, "low_key", i, mask, backdrop=image, background="blur"), repeats
    )
    return costs


def segmenter_accuracy(size: int) -> dict[str, float]:
    seg = ClassicalSegmenter()
    ious, times, faces = [], [], 0
    for scene in scene_grid(size):
        image, truth, _ = render_scene(scene)
        t0 = time.process_time()
        out = seg.segment(image)
        times.append(time.process_time() - t0)
        mask = clean_mask(out.mask)
        ious.append(float((mask & truth).sum() / max(1, (mask | truth).sum())))
        faces += out.prompt == "face"
    return {"scenes": len(ious), "iou_mean": float(np.mean(ious)), "iou_min": float(np.min(ious)),
            "seconds_median": statistics.median(times), "face_prompted": faces}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scene-size", type=int, default=512)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    costs = cpu_costs(args.side, args.repeats)
    print(f"CPU seconds per image (one core) at {args.side}² (median of {args.repeats})")
    for name, sec in costs.items():
        print(f"  {name:28s} {sec:6.3f}")
    worst = max(costs[k] for k in KINDS)
    ratio = costs["albedo_msr_15_80_250_fullres"] / costs["albedo_retinex"]
    print(f"  retinex_albedo is {ratio:.0f}x faster than the full-resolution multi-scale Retinex")
    print(f"  albedo + worst kind           {costs['albedo_retinex'] + worst:6.3f}  (goal <= 0.300)")
    acc = segmenter_accuracy(args.scene_size)
    print(f"classical segmenter on {acc['scenes']} rendered scenes at {args.scene_size}²: IoU mean {acc['iou_mean']:.3f} "
          f"(min {acc['iou_min']:.3f}), {acc['seconds_median']:.2f} CPU s/image, {acc['face_prompted']} face-prompted")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"side": args.side, "costs": costs, "classical": acc}, f, indent=2)


if __name__ == "__main__":
    main()
