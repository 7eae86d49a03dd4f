"""The pairs stage's two shard stages: :class:`SegmentStage` (rule ``segment``) finds each selected image's
subject, :class:`DegradeStage` (rule ``degrade``) flattens its lighting and relights it badly in seeded
variants. Both run under the one shard driver (:mod:`relightflow.shards`): an image whose file or mask is
unusable is a reject with its reason; a segmenter or albedo model that cannot load, or runs out of
memory, fails the job."""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from relightflow.digests import file_digest, json_digest, model_identity
from relightflow.errors import BadInput, EnvironmentFailure
from relightflow.images import ImageError, image_rng, image_seed, load_mask, load_rgb, save_image
from relightflow.manifest import read_json, write_json
from relightflow.pairs.albedo import AlbedoEstimator
from relightflow.pairs.contact import thumbnail, write_contact_sheet
from relightflow.pairs.degrade import choose_kind, degrade
from relightflow.pairs.filters import feather
from relightflow.pairs.quality import COLUMNS as QUALITY_COLUMNS
from relightflow.pairs.quality import TOO_LITTLE, gate_reason, measure, prepare
from relightflow.pairs.segment import Segmentation, Segmenter, build_segmenter, clean_mask
from relightflow.shards import Outcome, ShardStage, Stats, reason_key

log = logging.getLogger(__name__)

SEGMENT_COLUMNS = ["image_id", "path", "mask_path", "mask_area", "mask_score", "segmenter", "prompt", "split"]
PAIR_COLUMNS = [
    "image_id", "variant", "input_path", "target_path", "mask_path", "albedo_path", "degradation",
    "degradation_params", "seed", "split", "path", "albedo_method", "background", *QUALITY_COLUMNS,
]  # fmt: skip
CACHE_VERSION = 2
THUMB = 192  # contact-sheet tile size (px)
CONTACT_ROWS = 8  # images shown on a shard's contact sheet
CHECKPOINT_KEYS = {"sam2": "checkpoint", "sam3": "model"}  # the setting that names a segmenter's weights


# ---------------------------------------------------------------- segmentation cache


def segment_cache_key(digest: str, cfg: dict[str, Any]) -> str:
    """Content key: image bytes + segmenter, its settings and its weights' content + working size + code."""
    name = cfg["segmenter"]
    params = dict(cfg.get(name) or {})  # `none` has no section
    weights = CHECKPOINT_KEYS.get(name)
    spec = {"digest": digest, "segmenter": name, "params": params, "max_side": cfg["max_side"],
            "weights": model_identity(params[weights]) if weights else None, "v": CACHE_VERSION}  # fmt: skip
    return json_digest(spec)


@dataclass
class MaskCache:
    """Raw segmenter masks (PNG) and their score/prompt (JSON) under ``<cache_dir>/segment/``."""

    root: Path

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.png", folder / f"{key}.json"

    def get(self, key: str, shape: tuple[int, ...]) -> Segmentation | None:
        png, meta = self._paths(key)
        if not (png.exists() and meta.exists()):
            return None
        try:
            info = read_json(meta)
            mask = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        except (OSError, ValueError) as e:
            log.warning("unreadable cache entry %s: %s", key, e)
            return None
        if mask is None or mask.shape != tuple(shape[:2]):
            return None
        return Segmentation(mask > 127, float(info["score"]), str(info["prompt"]))

    def put(self, key: str, seg: Segmentation) -> None:
        png, meta = self._paths(key)
        save_image(png, seg.mask)
        write_json(meta, {"score": seg.score, "prompt": seg.prompt})


# ---------------------------------------------------------------- segment


@dataclass
class _LazySegmenter:
    """Loads the model only when an image misses the cache (a fully cached shard never loads SAM)."""

    cfg: dict[str, Any]
    _seg: Segmenter | None = field(default=None, init=False)

    def __call__(self, image: np.ndarray) -> Segmentation:
        if self._seg is None:
            try:
                self._seg = build_segmenter(self.cfg)
            except Exception as e:  # a model that cannot load is the environment's failure, not the image's
                raise EnvironmentFailure(f"cannot load segmenter {self.cfg['segmenter']!r}: {e}") from e
        return self._seg.segment(image)


def mask_reason(area: float, min_fraction: float) -> str:
    """Reject reason for a cleaned mask covering ``area`` of the frame ('' = keep)."""
    if area <= 0:
        return "empty mask"
    if area < min_fraction:
        return f"mask too small: {area:.2%} of the frame < {min_fraction:.2%}"
    return ""


class SegmentStage(ShardStage):
    """Segment every selected image of a shard (``cfg`` = the ``pairs`` config section); masks are cached
    by content under ``cache_dir/segment`` and written feathered to ``masks_dir``."""

    name = "segment"
    columns = SEGMENT_COLUMNS

    def __init__(self, selected: str | os.PathLike, cfg: dict[str, Any], cache_dir: str | os.PathLike,
                 masks_dir: str | os.PathLike):  # fmt: skip
        super().__init__(selected)
        self.cfg, self.masks_dir = cfg, Path(masks_dir)
        self.cache, self.segmenter = MaskCache(Path(cache_dir) / "segment"), _LazySegmenter(cfg)

    def open(self) -> None:
        self.masks_dir.mkdir(parents=True, exist_ok=True)

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        image = load_rgb(row["path"], max_side=cfg["max_side"])
        key = segment_cache_key(file_digest(row["path"]), cfg)
        seg = self.cache.get(key, image.shape)
        if seg is None:
            seg = self.segmenter(image)
            if seg.mask.shape != image.shape[:2]:
                raise RuntimeError(f"segmenter returned a {seg.mask.shape} mask for a {image.shape[:2]} image")
            self.cache.put(key, seg)
        mask = clean_mask(seg.mask)
        area = float(mask.mean())
        reason = mask_reason(area, cfg["min_mask_fraction"])
        if reason:
            raise ImageError(reason)
        mask_path = self.masks_dir / f"{row['image_id']}.png"
        save_image(mask_path, feather(mask, cfg["feather_px"]))
        return {**row, "mask_path": str(mask_path), "mask_area": round(area, 5), "mask_score": round(seg.score, 5),
                "segmenter": cfg["segmenter"], "prompt": seg.prompt,
                "work_height": image.shape[0], "work_width": image.shape[1]}  # fmt: skip

    def info(self) -> dict[str, Any]:
        return {"segmenter": self.cfg["segmenter"]}


# ---------------------------------------------------------------- degrade


def load_soft_mask(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """A saved (feathered) mask as uint8 at ``shape``; :class:`ImageError` when it cannot be read."""
    try:
        mask = load_mask(path, soft=True)
    except ImageError as e:
        raise ImageError(f"mask unreadable: {e}") from e
    if mask.shape != tuple(shape[:2]):
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return mask


@dataclass
class Variant:
    """One degraded variant, its measured change from the target and the gate's reason to drop it ('')."""

    variant: int
    kind: str
    seed: int
    image: np.ndarray
    params: dict[str, Any]
    change: dict[str, float]
    reason: str = ""

    @property
    def label(self) -> str:
        if self.reason:
            return f"v{self.variant} {self.kind} DROP {'small' if reason_key(self.reason) == TOO_LITTLE else 'wreck'}"
        return f"v{self.variant} {self.kind} {self.params.get('occluder', {}).get('pattern', '')}".strip()


@dataclass
class PairResult:
    """One image's kept rows, its contact-sheet thumbnails and the variants the quality gate dropped
    (``(kind, reason)``); ``reject`` is set when no variant is left."""

    rows: list[dict[str, Any]]
    thumbs: list[tuple[str, np.ndarray]]
    dropped: list[tuple[str, str]] = field(default_factory=list)
    reject: str | None = None


def make_variants(
    image_id: str, image: np.ndarray, alb: np.ndarray, mask: np.ndarray, cfg: dict[str, Any], seed: int
) -> list[Variant]:
    """``cfg['variants']`` seeded degradations of the albedo, each measured against ``image`` and gated."""
    gate = cfg["quality"]
    ref = prepare(image, mask, gate["side"])
    variants = []
    for variant in range(cfg["variants"]):
        kind = choose_kind(image_rng(seed, image_id, "pairs", variant, "kind"), cfg["degradations"])
        vseed = image_seed(seed, image_id, "pairs", variant)
        out, params = degrade(alb, kind, vseed, mask, background=cfg["background"], backdrop=image)
        change = measure(out, ref)
        reason = gate_reason(change, kind, gate["bounds"]) if gate["enabled"] else ""
        variants.append(Variant(variant, kind, vseed, out, params, change, reason))
    return variants


def gate_reject(dropped: list[Variant]) -> str:
    """Reject reason of an image whose every variant failed the gate: the common failure class (else
    'failed the quality gate') before the colon, then each variant's reason."""
    classes = {reason_key(v.reason) for v in dropped}
    key = classes.pop() if len(classes) == 1 else "failed the quality gate"
    details = "; ".join(f"v{v.variant} {v.kind} {v.reason}" for v in dropped)
    return f"{key}: every variant failed the quality gate ({details})"


def pair_image(
    row: dict[str, Any], cfg: dict[str, Any], albedo: AlbedoEstimator, seed: int, images_dir: Path
) -> PairResult:
    """Albedo + ``cfg['variants']`` degraded variants of one segmented image, each measured against the
    target (:mod:`relightflow.pairs.quality`) and dropped when outside its kind's bounds. Files are written
    for kept variants only, and none when no variant is kept (the result's ``reject`` says why)."""
    image_id, ext = str(row["image_id"]), cfg["image_format"]
    image = load_rgb(row["path"], max_side=cfg["max_side"])
    mask = load_soft_mask(row["mask_path"], image.shape)
    alb = albedo(image, mask)
    variants = make_variants(image_id, image, alb, mask, cfg, seed)
    thumbs = [(name, thumbnail(x, THUMB)) for name, x in (("original", image), ("mask", mask), ("albedo", alb))]
    thumbs += [(v.label, thumbnail(v.image, THUMB)) for v in variants]
    kept, dropped = [v for v in variants if not v.reason], [v for v in variants if v.reason]
    drops = [(v.kind, v.reason) for v in dropped]
    if not kept:
        return PairResult([], thumbs, drops, reject=gate_reject(dropped))
    target_path, albedo_path = images_dir / f"{image_id}_target.{ext}", images_dir / f"{image_id}_albedo.{ext}"
    save_image(target_path, image)
    save_image(albedo_path, alb)
    rows = []
    for v in kept:
        input_path = images_dir / f"{image_id}_v{v.variant}.{ext}"
        save_image(input_path, v.image)
        rows.append({
            "image_id": image_id, "variant": v.variant, "input_path": str(input_path),
            "target_path": str(target_path), "mask_path": row["mask_path"], "albedo_path": str(albedo_path),
            "degradation": v.kind, "degradation_params": json.dumps(v.params, sort_keys=True), "seed": v.seed,
            "split": row.get("split"), "path": row["path"], "albedo_method": albedo.method,
            "background": v.params["background"], **v.change,
        })  # fmt: skip
    return PairResult(rows, thumbs, drops)


class DegradeStage(ShardStage):
    """Albedo and degraded variants of every segmented image of a shard, ``threads`` images at a time
    (OpenCV and numpy release the GIL), each variant through the quality gate (``cfg['quality']``); a
    contact sheet of the first images for visual QA."""

    name = "degrade"
    columns = PAIR_COLUMNS

    def __init__(self, segments: str | os.PathLike, cfg: dict[str, Any], seed: int, images_dir: str | os.PathLike,
                 contact_path: str | os.PathLike, threads: int = 1):  # fmt: skip
        super().__init__(segments)
        self.cfg, self.seed, self.images_dir, self.contact_path = cfg, seed, Path(images_dir), contact_path
        self.threads, self.thumbs, self.sheet = max(1, int(threads)), {}, []
        self.dropped: dict[str, list[tuple[str, str]]] = {}
        self.lock = threading.Lock()

    def open(self) -> None:
        try:
            self.albedo = AlbedoEstimator(self.cfg)
        except Exception as e:  # a model that cannot load is the environment's failure
            raise EnvironmentFailure(f"cannot load albedo method {self.cfg['albedo']!r}: {e}") from e
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.workers = 1 if self.albedo.method == "marigold" else self.threads
        self.batch_size = max(8, 4 * self.workers)
        cv2.setNumThreads(1 if self.workers > 1 else self.threads)
        self.pool = ThreadPoolExecutor(max_workers=self.workers)

    def close(self) -> None:
        if hasattr(self, "pool"):
            self.pool.shutdown(cancel_futures=True)

    def process(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        result = pair_image(row, self.cfg, self.albedo, self.seed, self.images_dir)
        with self.lock:
            self.thumbs[str(row["image_id"])] = result.thumbs
            self.dropped[str(row["image_id"])] = result.dropped
        if result.reject:
            raise BadInput(result.reject)
        return result.rows

    def process_batch(self, items: list[dict[str, Any]]) -> list[Outcome]:
        return list(self.pool.map(self.process_one, items))

    def observe(self, outcome: Outcome, stats: Stats) -> None:
        """Counts: ``kinds`` (kept pairs per kind), ``variants`` (measured by the gate) and ``dropped``
        (variants the gate dropped, per reason class and kind): variants = rows + every dropped."""
        thumbs = self.thumbs.pop(outcome.image_id, None)
        if thumbs and outcome.reject is None and len(self.sheet) < CONTACT_ROWS:
            self.sheet.append(thumbs)
        kinds = stats.counts.setdefault("kinds", {})
        for row in outcome.rows:
            kinds[row["degradation"]] = kinds.get(row["degradation"], 0) + 1
        dropped = self.dropped.pop(outcome.image_id, [])
        stats.count("variants", len(outcome.rows) + len(dropped))
        by_reason = stats.counts.setdefault("dropped", {})
        for kind, reason in dropped:
            per_kind = by_reason.setdefault(reason_key(reason), {})
            per_kind[kind] = per_kind.get(kind, 0) + 1

    def finish(self, stats: Stats, rows: list[dict[str, Any]]) -> None:
        write_contact_sheet(self.contact_path, self.sheet, THUMB)

    def info(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"albedo": self.albedo.describe(), "variants": cfg["variants"], "quality": cfg["quality"]}
