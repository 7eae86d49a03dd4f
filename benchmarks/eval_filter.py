"""Does a lighting score order good over degraded lighting? Measured on real labelled photos.

Each source image is degraded synthetically with a known direction: exposure changed by -2, -1, +1, +2
stops (in linear light, clipped like a sensor) and contrast flattened. Figures per image set: pairwise
accuracy (the original scores above its degraded version, per kind), the Spearman rho of the score
against ``-|stops|`` on each image's exposure ladder (-2..+2) averaged over images, and the accuracy of
``score(1 stop off) > score(2 stops off)`` on each side, which holds even when the original itself is
not perfectly exposed (the originals are label noise: bright Cube++ skies, dark VIDIT night renders).

    .venv/bin/python benchmarks/eval_filter.py --backend stats
    .venv/bin/python benchmarks/eval_filter.py --backend clip --model ViT-B-32 --pretrained /path/open_clip.bin

Labelled sets are read from ``$RELIGHTFLOW_EVALDATA`` (default: ``../shared/evaldata`` beside the
checkout); they are for evaluating only and are not part of the repository.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

EVALDATA = Path(os.environ.get("RELIGHTFLOW_EVALDATA", Path(__file__).resolve().parents[2] / "shared" / "evaldata"))
LADDER = (-2.0, -1.0, 0.0, 1.0, 2.0)
ScoreFn = Callable[[list[np.ndarray]], np.ndarray]


def _to_linear(img: np.ndarray) -> np.ndarray:
    v = img.astype(np.float64) / 255.0
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _to_srgb(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin, 0.0, 1.0)
    v = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.clip(v * 255.0 + 0.5, 0, 255).astype(np.uint8)


def expose(img: np.ndarray, stops: float) -> np.ndarray:
    """The image with its exposure changed by ``stops`` (linear light, clipped at white)."""
    return img if stops == 0 else _to_srgb(_to_linear(img) * 2.0**stops)


def flatten(img: np.ndarray, amount: float = 0.6) -> np.ndarray:
    """Contrast reduced towards the mean grey: flat, hazy lighting."""
    mean = img.reshape(-1, 3).mean(axis=0)
    return np.clip(img * (1 - amount) + mean * amount + 0.5, 0, 255).astype(np.uint8)


def image_sets(root: Path = EVALDATA) -> dict[str, list[np.ndarray]]:
    """Real photos: Cube++ tiles, MLS chart tiles, VIDIT renders (if present) and scikit-image photos."""
    from skimage import data

    sets = {
        "skimage_photos": [
            getattr(data, n)() for n in ("astronaut", "chelsea", "coffee", "immunohistochemistry")
        ],
    }
    for name, pattern in (("cubepp", "C_cubepp_lighting_type/tiles/*.png"), ("mls", "C_mls_colored_light_chart/tiles/*.png"),
                          ("vidit", "C_vidit_direction_colortemp/frames/*.png")):  # fmt: skip
        files = sorted(root.glob(pattern))
        if files:
            sets[name] = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return sets


def _variants(img: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    for stops in LADDER:
        yield f"{stops:+.0f} stops", expose(img, stops)
    yield "flat", flatten(img)


def evaluate(images: list[np.ndarray], score: ScoreFn) -> dict[str, float]:
    """Pairwise accuracy per degradation kind, overall, and the mean exposure-ladder Spearman rho."""
    from scipy.stats import spearmanr

    kinds = [k for k, _ in _variants(images[0])]
    scores = np.array([score([v for _, v in _variants(img)]) for img in images])  # (images, kinds)
    original = scores[:, kinds.index("+0 stops")]
    out = {}
    for j, kind in enumerate(kinds):
        if kind != "+0 stops":
            out[f"acc {kind}"] = float(np.mean(original > scores[:, j]))
    out["pairwise accuracy"] = float(np.mean([v for k, v in out.items() if k.startswith("acc")]))
    for near, far in (
        ("-1 stops", "-2 stops"),
        ("+1 stops", "+2 stops"),
    ):  # further is worse, whatever the start
        out[f"acc {near} > {far}"] = float(
            np.mean(scores[:, kinds.index(near)] > scores[:, kinds.index(far)])
        )
    target = -np.abs(np.array(LADDER))
    rhos = [spearmanr(row[: len(LADDER)], target).statistic for row in scores]
    out["ladder spearman"] = float(np.nanmean(rhos))
    out["n_images"] = len(images)
    return out


def stats_scorer() -> ScoreFn:
    from relightflow.filter.stats import lighting_score

    return lambda imgs: np.array([lighting_score(i) for i in imgs])


def clip_scorer(cfg: dict) -> ScoreFn:
    from relightflow.filter.clip import ClipScorer
    from relightflow.filter.data import resize_center_crop

    scorer = ClipScorer(cfg)
    return lambda imgs: scorer.score(
        np.stack([resize_center_crop(Image.fromarray(i), scorer.size) for i in imgs])
    )["lighting_score"]


def main(argv: list[str] | None = None) -> dict:
    import yaml

    parser = argparse.ArgumentParser(description="Evaluate a lighting score on degraded real photos")
    parser.add_argument("--backend", choices=("stats", "clip"), default="stats")
    parser.add_argument("--model", help="open_clip model name or config .json (clip)")
    parser.add_argument("--pretrained", help="open_clip tag or checkpoint path (clip)")
    parser.add_argument("--config", default="config.yaml", help="prompts come from filter.clip of this file")
    parser.add_argument("--evaldata", type=Path, default=EVALDATA)
    args = parser.parse_args(argv)
    if args.backend == "stats":
        score = stats_scorer()
    else:
        cfg = dict(yaml.safe_load(Path(args.config).read_text())["filter"]["clip"])
        cfg.update({k: v for k, v in (("model", args.model), ("pretrained", args.pretrained)) if v})
        score = clip_scorer(cfg)
    results = {name: evaluate(imgs, score) for name, imgs in image_sets(args.evaldata).items()}
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
