"""Shard drivers of the pairs stage: ``segment_shard`` (rule ``segment``) and ``degrade_shard`` (rule
``degrade``). Both stream their input manifest in batches, record a reject row with a reason for every
image they cannot use, and check that images in = kept + rejected."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from relightflow.images import ImageError, file_digest, image_rng, image_seed, load_rgb, save_image
from relightflow.manifest import (
    Reject,
    StageStats,
    iter_batches,
    read_json,
    write_json,
    write_rejects,
    write_table,
)
from relightflow.pairs.albedo import AlbedoEstimator
from relightflow.pairs.contact import thumbnail, write_contact_sheet
from relightflow.pairs.degrade import choose_kind, degrade
from relightflow.pairs.filters import feather
from relightflow.pairs.segment import Segmentation, Segmenter, build_segmenter, clean_mask

log = logging.getLogger(__name__)

SEGMENT_COLUMNS = ["image_id", "path", "mask_path", "mask_area", "mask_score", "segmenter", "prompt", "split"]
PAIR_COLUMNS = [
    "image_id", "variant", "input_path", "target_path", "mask_path", "albedo_path", "degradation",
    "degradation_params", "seed", "split", "path", "albedo_method", "background",
]  # fmt: skip
CACHE_VERSION = 1
DEFAULT_MAX_SIDE = 1024
THUMB = 192  # contact-sheet tile size (px)


# ---------------------------------------------------------------- segmentation cache


def segment_cache_key(digest: str, cfg: dict[str, Any]) -> str:
    """Content key: image bytes + segmenter name + its config section + working size + code version."""
    name = cfg.get("segmenter", "none")
    spec = {"digest": digest, "segmenter": name, "params": cfg.get(name) or {},
            "max_side": cfg.get("max_side", DEFAULT_MAX_SIDE), "v": CACHE_VERSION}  # fmt: skip
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


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
            except Exception as e:  # a model that cannot load is a setup error, not a bad image
                raise SegmenterUnavailable(f"cannot load segmenter {self.cfg.get('segmenter')!r}: {e}") from e
        return self._seg.segment(image)


class SegmenterUnavailable(RuntimeError):
    """The configured segmenter cannot be built: fail the job instead of rejecting every image."""


def mask_reason(area: float, min_fraction: float) -> str:
    """Reject reason for a cleaned mask covering ``area`` of the frame ('' = keep)."""
    if area <= 0:
        return "empty mask"
    if area < min_fraction:
        return f"mask too small: {area:.2%} of the frame < {min_fraction:.2%}"
    return ""


def segment_image(
    row: dict[str, Any], cfg: dict[str, Any], segmenter: _LazySegmenter, cache: MaskCache, masks_dir: Path
) -> dict[str, Any]:
    """Segment one image; return its manifest row or raise :class:`ImageError` with the reject reason."""
    image = load_rgb(row["path"], max_side=int(cfg.get("max_side", DEFAULT_MAX_SIDE)))
    key = segment_cache_key(file_digest(row["path"]), cfg)
    seg = cache.get(key, image.shape)
    if seg is None:
        seg = segmenter(image)
        if seg.mask.shape != image.shape[:2]:
            raise ImageError(f"segmenter returned a {seg.mask.shape} mask for a {image.shape[:2]} image")
        cache.put(key, seg)
    mask = clean_mask(seg.mask)
    area = float(mask.mean())
    reason = mask_reason(area, float(cfg.get("min_mask_fraction", 0.02)))
    if reason:
        raise ImageError(reason)
    mask_path = masks_dir / f"{row['image_id']}.png"
    save_image(mask_path, feather(mask, float(cfg.get("feather_px", 3))))
    return {**row, "mask_path": str(mask_path), "mask_area": round(area, 5), "mask_score": round(seg.score, 5),
            "segmenter": cfg.get("segmenter", "none"), "prompt": seg.prompt,
            "work_height": image.shape[0], "work_width": image.shape[1]}  # fmt: skip


def segment_shard(
    selected_path: str | os.PathLike,
    shard: str,
    segments_path: str | os.PathLike,
    masks_dir: str | os.PathLike,
    rejects_path: str | os.PathLike,
    stats_path: str | os.PathLike,
    cfg: dict[str, Any],
    cache_dir: str | os.PathLike = "results/cache",
) -> StageStats:
    """Segment every selected image of a shard (``cfg`` = the ``pairs`` config section)."""
    stats = StageStats("segment", shard)
    masks_dir = Path(masks_dir)
    masks_dir.mkdir(parents=True, exist_ok=True)
    cache, segmenter = MaskCache(Path(cache_dir) / "segment"), _LazySegmenter(cfg)
    rows, rejects = [], []
    for row in _rows(selected_path):
        stats.n_in += 1
        try:
            rows.append(segment_image(row, cfg, segmenter, cache, masks_dir))
            stats.n_kept += 1
        except SegmenterUnavailable:
            raise
        except Exception as e:  # one bad image never fails the shard
            reason = _reason(e, "segmentation failed")
            rejects.append(Reject(str(row["image_id"]), str(row["path"]), "segment", reason))
            stats.reject(reason)
    stats.extra["segmenter"] = cfg.get("segmenter", "none")
    write_table(segments_path, rows, columns=SEGMENT_COLUMNS)
    write_rejects(rejects_path, rejects)
    stats.write(stats_path)
    return stats


def _rows(path: str | os.PathLike, batch_size: int = 64) -> Iterator[dict[str, Any]]:
    for batch in iter_batches(path, batch_size=batch_size):
        yield from batch.to_dict("records")


def _reason(error: Exception, prefix: str) -> str:
    if isinstance(error, ImageError):
        return str(error)
    log.error("%s", prefix, exc_info=error)
    return f"{prefix}: {type(error).__name__}: {error}"


# ---------------------------------------------------------------- degrade


@dataclass
class PairsConfig:
    """What ``degrade_shard`` needs from the ``pairs`` config section."""

    degradations: list[dict[str, Any]]
    variants: int = 1
    background: str = "keep"
    max_side: int = DEFAULT_MAX_SIDE
    image_format: str = "png"

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any]) -> PairsConfig:
        return cls(
            degradations=list(cfg.get("degradations") or [{"kind": "soft_shading", "weight": 1}]),
            variants=int(cfg.get("variants", 1)),
            background=str(cfg.get("background", "keep")),
            max_side=int(cfg.get("max_side", DEFAULT_MAX_SIDE)),
            image_format=str(cfg.get("image_format", "png")).lstrip("."),
        )


def load_soft_mask(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """A saved (feathered) mask as uint8 at ``shape``; raise :class:`ImageError` when it is missing."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ImageError(f"mask unreadable: {path}")
    if mask.shape != tuple(shape[:2]):
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return mask


@dataclass
class PairResult:
    rows: list[dict[str, Any]]
    thumbs: list[tuple[str, np.ndarray]]


def pair_image(
    row: dict[str, Any], pc: PairsConfig, albedo: AlbedoEstimator, seed: int, images_dir: Path
) -> PairResult:
    """Albedo + ``pc.variants`` degraded variants of one segmented image; files written, rows returned."""
    image_id, ext = str(row["image_id"]), pc.image_format
    image = load_rgb(row["path"], max_side=pc.max_side)
    mask = load_soft_mask(row["mask_path"], image.shape)
    alb = albedo(image, mask)
    target_path, albedo_path = (
        images_dir / f"{image_id}_target.{ext}",
        images_dir / f"{image_id}_albedo.{ext}",
    )
    save_image(target_path, image)
    save_image(albedo_path, alb)
    rows, thumbs = (
        [],
        [(name, thumbnail(x, THUMB)) for name, x in (("original", image), ("mask", mask), ("albedo", alb))],
    )
    for variant in range(pc.variants):
        kind = choose_kind(image_rng(seed, image_id, "pairs", variant, "kind"), pc.degradations)
        vseed = image_seed(seed, image_id, "pairs", variant)
        out, params = degrade(alb, kind, vseed, mask, background=pc.background, backdrop=image)
        input_path = images_dir / f"{image_id}_v{variant}.{ext}"
        save_image(input_path, out)
        label = f"v{variant} {kind} {params.get('occluder', {}).get('pattern', '')}".strip()
        thumbs.append((label, thumbnail(out, THUMB)))
        rows.append({
            "image_id": image_id, "variant": variant, "input_path": str(input_path),
            "target_path": str(target_path), "mask_path": row["mask_path"], "albedo_path": str(albedo_path),
            "degradation": kind, "degradation_params": json.dumps(params, sort_keys=True), "seed": vseed,
            "split": row.get("split"), "path": row["path"], "albedo_method": albedo.method,
            "background": params["background"],
        })  # fmt: skip
    return PairResult(rows, thumbs)


def degrade_shard(
    segments_path: str | os.PathLike,
    shard: str,
    manifest_path: str | os.PathLike,
    images_dir: str | os.PathLike,
    contact_path: str | os.PathLike,
    rejects_path: str | os.PathLike,
    stats_path: str | os.PathLike,
    cfg: dict[str, Any],
    seed: int,
    threads: int = 1,
    contact_rows: int = 8,
) -> StageStats:
    """Albedo and degraded variants for every segmented image of a shard, ``threads`` images at a time."""
    stats, pc = StageStats("degrade", shard), PairsConfig.from_cfg(cfg)
    albedo = AlbedoEstimator(cfg)
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    workers = 1 if albedo.method == "marigold" else max(1, int(threads))
    cv2.setNumThreads(1 if workers > 1 else max(1, int(threads)))
    rows, rejects, sheet, kinds = [], [], [], {}

    def work(row: dict[str, Any]) -> PairResult | Exception:
        try:
            return pair_image(row, pc, albedo, seed, images_dir)
        except Exception as e:  # recorded as a reject below
            return e

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in iter_batches(segments_path, batch_size=max(8, 4 * workers)):
            records = batch.to_dict("records")
            for row, result in zip(records, pool.map(work, records), strict=True):
                stats.n_in += 1
                if isinstance(result, Exception):
                    reason = _reason(result, "degradation failed")
                    rejects.append(Reject(str(row["image_id"]), str(row["path"]), "degrade", reason))
                    stats.reject(reason)
                    continue
                stats.n_kept += 1
                rows.extend(result.rows)
                for r in result.rows:
                    kinds[r["degradation"]] = kinds.get(r["degradation"], 0) + 1
                if len(sheet) < contact_rows:
                    sheet.append(result.thumbs)
    stats.extra.update({"variants": len(rows), "kinds": kinds, "albedo": albedo.describe()})
    write_table(manifest_path, rows, columns=PAIR_COLUMNS)
    write_contact_sheet(contact_path, sheet, THUMB)
    write_rejects(rejects_path, rejects)
    stats.write(stats_path)
    return stats


# ---------------------------------------------------------------- gather


def _totals(stage: str, per_shard: list[dict[str, Any]]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for s in per_shard:
        for r, n in s["reasons"].items():
            reasons[r] = reasons.get(r, 0) + n
    total = {k: sum(s[k] for s in per_shard) for k in ("n_in", "n_kept", "n_rejected")}
    return {
        "stage": stage,
        **total,
        "reasons": reasons,
        "seconds": round(sum(s["seconds"] for s in per_shard), 3),
    }


def gather_pairs(
    segment_stats: list[str],
    degrade_stats: list[str],
    rejects: list[str],
    stats_out: str | os.PathLike,
    rejects_out: str | os.PathLike,
) -> dict[str, Any]:
    """One summary of both pairs rules (in/kept/rejected, reasons, degradation kinds) and one rejects table."""
    from relightflow.manifest import REJECT_COLUMNS, read_tables

    seg, deg = [read_json(p) for p in segment_stats], [read_json(p) for p in degrade_stats]
    kinds: dict[str, int] = {}
    for s in deg:
        for k, n in s["extra"].get("kinds", {}).items():
            kinds[k] = kinds.get(k, 0) + n
    summary = {
        "segment": _totals("segment", seg),
        "degrade": _totals("degrade", deg),
        "pairs": sum(s["extra"].get("variants", 0) for s in deg),
        "kinds": dict(sorted(kinds.items())),
    }
    write_table(rejects_out, read_tables(rejects), columns=REJECT_COLUMNS)
    write_json(stats_out, summary)
    return summary
