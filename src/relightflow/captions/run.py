"""The ``caption`` stage on one shard: measure every image, ask the VLM (cached), render the instruction.

Reads the shard's selected images (``image_id, path``) in batches and the subject masks from the
segments table (``image_id, mask_path``; empty when there is none). Writes the captions table, a rejects
table (unreadable image, failed caption) and stats with cache hits/misses, requests and retries. Every
image in is either captioned or rejected with a reason; an error text is never stored as a caption.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relightflow.captions.cache import CaptionCache, cache_key
from relightflow.captions.measure import measure_lighting
from relightflow.captions.providers import Captioner, make_captioner
from relightflow.captions.providers.base import CaptionResult
from relightflow.captions.render import (
    DEFAULT_TEMPLATE,
    check_template,
    combine,
    measured_fields,
    render_instruction,
)
from relightflow.captions.schema import PROMPT_VERSION, LightingDescription, prompt_fingerprint
from relightflow.images import ImageError, file_digest, load_mask, load_rgb
from relightflow.manifest import (
    Reject,
    StageStats,
    iter_batches,
    read_json,
    read_table,
    write_json,
    write_rejects,
    write_table,
)

log = logging.getLogger(__name__)

STAGE = "captions"
MEASURE_VERSION = "measure-v1"
MEASURED_KEYS = ("horizontal", "vertical", "direction", "backlit", "color_temperature", "warmth", "light_color",
                 "contrast", "hardness", "key", "light_type", "direction_confidence", "color_confidence",
                 "mask_used")  # fmt: skip
VLM_KEYS = ("light_source", "direction", "color_temperature", "hardness", "setting", "phrase")
COLUMNS = [
    "image_id", "path", "instruction", "source", "light_direction", "color_temperature", "prompt_version",
    "attributes_mode", "cache_hit", "agreement", "agreement_direction", "agreement_temperature",
    *(f"measured_{k}" for k in MEASURED_KEYS), *(f"vlm_{k}" for k in VLM_KEYS),
]  # fmt: skip


@dataclass
class Item:
    """One image of the shard on its way through the stage."""

    image_id: str
    path: str
    image: np.ndarray | None = None
    measured: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def read_mask_paths(segments_path: str | os.PathLike | None) -> dict[str, str]:
    """image_id → mask path from the segments table (missing table or column: no masks)."""
    if not segments_path or not os.path.exists(segments_path):
        return {}
    df = read_table(segments_path)
    if "mask_path" not in df.columns:
        return {}
    return {
        str(i): str(p)
        for i, p in zip(df["image_id"], df["mask_path"], strict=True)
        if isinstance(p, str) and p
    }


def _load_item(image_id: str, path: str, mask_path: str | None, max_side: int) -> Item:
    item = Item(image_id, path)
    try:
        item.image = load_rgb(path, max_side=max_side)
    except ImageError as e:
        item.reason = f"unreadable image: {e}"
        return item
    mask = None
    if mask_path:
        try:
            mask = load_mask(mask_path)
        except OSError as e:
            log.warning("%s: mask %s unreadable (%s); measuring without it", image_id, mask_path, e)
    if (
        mask is not None
        and abs(mask.shape[0] / mask.shape[1] - item.image.shape[0] / item.image.shape[1]) > 0.02
    ):
        log.warning("%s: mask shape %s does not match the image; measuring without it", image_id, mask.shape)
        mask = None
    try:
        item.measured = measure_lighting(item.image, mask)
    except ValueError as e:
        item.reason = f"unmeasurable image: {e}"
    return item


def _describe_cached(
    captioner: Captioner, cache: CaptionCache, items: list[Item], prompt_version: str
) -> list[tuple[CaptionResult, bool]]:
    """(result, cache_hit) per item: cached answers first, the misses in one provider call."""
    version = f"{prompt_version}+{prompt_fingerprint()}"  # editing the prompt in code also re-captions
    keys = [cache_key(file_digest(it.path), captioner.name, captioner.model, version, captioner.params())
            for it in items]  # fmt: skip
    out: list[tuple[CaptionResult, bool] | None] = [None] * len(items)
    misses = []
    for i, key in enumerate(keys):
        hit = cache.get(key)
        if hit is not None:
            out[i] = (
                CaptionResult(LightingDescription.model_validate(hit["description"]), hit.get("raw", "")),
                True,
            )
        else:
            misses.append(i)
    if misses:
        results = captioner.describe([items[i].image for i in misses])
        for i, result in zip(misses, results, strict=True):
            if result.ok:
                cache.put(keys[i], {"description": result.description.model_dump(), "raw": result.raw})
            out[i] = (result, False)
    return out  # type: ignore[return-value]


def _row(item: Item, cfg: dict[str, Any], source: str, result: CaptionResult | None, cache_hit: bool) -> dict:
    mode = cfg.get("attributes", "complement")
    row: dict[str, Any] = {"image_id": item.image_id, "path": item.path, "source": source,
                           "prompt_version": cfg.get("prompt_version", PROMPT_VERSION), "cache_hit": cache_hit,
                           **{f"measured_{k}": item.measured.get(k) for k in MEASURED_KEYS}}  # fmt: skip
    if result is None:
        fields = measured_fields(item.measured)
        row.update(attributes_mode="measured", agreement=math.nan)
    else:
        vlm = result.description.model_dump()
        fields, agreement = combine(vlm, item.measured, mode)
        row.update(attributes_mode=mode, **agreement, **{f"vlm_{k}": vlm[k] for k in VLM_KEYS})
    row["instruction"] = render_instruction(
        fields, cfg.get("template", DEFAULT_TEMPLATE), int(cfg.get("max_chars", 200))
    )
    row["light_direction"], row["color_temperature"] = fields["direction"], fields["temperature"]
    return row


def _caption_batch(
    items: list[Item], captioner: Captioner | None, cache: CaptionCache, cfg: dict[str, Any], source: str
) -> list[dict[str, Any]]:
    """Rows for the readable items of a batch; a failed item gets its ``reason`` set instead."""
    good = [it for it in items if not it.reason]
    prompt_version = str(cfg.get("prompt_version", PROMPT_VERSION))
    results = (
        _describe_cached(captioner, cache, good, prompt_version) if captioner else [(None, False)] * len(good)
    )
    rows = []
    for it, (result, hit) in zip(good, results, strict=True):
        if result is not None and not result.ok:
            it.reason = f"caption failed: {result.error}"
            continue
        row = _row(it, cfg, source, result, hit)
        if row["instruction"]:
            rows.append(row)
        else:
            it.reason = "caption failed: empty instruction after sanitising"
    return rows


def _source(cfg: dict[str, Any], captioner: Captioner | None) -> str:
    return f"{captioner.name}/{captioner.model}" if captioner else f"measured/{MEASURE_VERSION}"


def _provider_option(cfg: dict[str, Any], name: str, default: int) -> int:
    """An option of the provider's section, else of the captions section, else ``default``."""
    provider_cfg = cfg.get(cfg["provider"]) or {}
    return int(provider_cfg.get(name) or cfg.get(name) or default)


def caption_shard(
    selected_path: str | os.PathLike,
    segments_path: str | os.PathLike | None,
    shard: str,
    out_path: str | os.PathLike,
    rejects_path: str | os.PathLike,
    stats_path: str | os.PathLike,
    cfg: dict[str, Any],
    cache_dir: str | os.PathLike = "results/cache",
    captioner: Captioner | None = None,
) -> StageStats:
    """Caption one shard (see the module docstring); ``captioner`` overrides the configured provider."""
    check_template(cfg.get("template", DEFAULT_TEMPLATE))
    stats = StageStats(STAGE, shard)
    masks = read_mask_paths(segments_path)
    owned = captioner is None
    if owned:
        captioner = make_captioner(cfg)
    cache = CaptionCache(cache_dir, enabled=bool(cfg.get("cache", True)))
    prompt_version = str(cfg.get("prompt_version", PROMPT_VERSION))
    rows, rejects, source = [], [], _source(cfg, captioner)
    max_side, batch_size = _provider_option(cfg, "max_side", 768), _provider_option(cfg, "batch_size", 16)
    try:
        for batch in iter_batches(selected_path, batch_size, columns=["image_id", "path"]):
            items = [_load_item(str(i), str(p), masks.get(str(i)), max_side)
                     for i, p in zip(batch["image_id"], batch["path"], strict=True)]  # fmt: skip
            stats.n_in += len(items)
            rows += _caption_batch(items, captioner, cache, cfg, source)
            for it in items:
                it.image = None  # bounded memory: drop pixels once the batch is done
                if it.reason:
                    rejects.append(Reject(it.image_id, it.path, STAGE, it.reason))
                    stats.reject(it.reason)
    finally:
        if owned and captioner is not None:
            captioner.close()
    stats.n_kept = len(rows)
    stats.extra = {"provider": cfg["provider"], "source": source, "prompt_version": prompt_version,
                   **cache.stats(), **(captioner.counters.as_dict() if captioner else {})}  # fmt: skip
    _check_failure_rate(stats, float(cfg.get("max_failure_rate", 0.5)))
    write_table(out_path, rows, columns=COLUMNS)
    write_rejects(rejects_path, rejects)
    stats.write(stats_path)
    log.info("captions %s: %d in, %d kept, %d rejected, %s", shard, stats.n_in, stats.n_kept, stats.n_rejected,
             stats.extra)  # fmt: skip
    return stats


def _check_failure_rate(stats: StageStats, max_rate: float) -> None:
    """Fail the job (nothing written, answers already cached) when the provider failed on too many images.

    An unreachable endpoint must not produce a "finished" shard whose images are all rejected.
    """
    failed = sum(n for reason, n in stats.reasons.items() if reason == "caption failed")
    if stats.n_in and failed / stats.n_in > max_rate:
        raise RuntimeError(
            f"captions {stats.shard}: {failed}/{stats.n_in} captions failed (> max_failure_rate {max_rate}); "
            f"reasons {stats.reasons}. Successful answers are cached: rerun when the provider is healthy."
        )


def gather_captions(
    stats_paths: list[str], rejects_paths: list[str], stats_out: str, rejects_out: str
) -> dict:
    """Merge per-shard stats (counts, cache hits/misses, requests, retries) and rejects."""
    from relightflow.manifest import read_tables

    per_shard = [read_json(p) for p in stats_paths]
    summable = ("n_in", "n_kept", "n_rejected")
    extra_keys = ("cache_hits", "cache_misses", "requests", "retries", "failures")
    summary: dict[str, Any] = {"stage": STAGE, **{k: sum(s[k] for s in per_shard) for k in summable}}
    summary.update({k: sum(s.get("extra", {}).get(k, 0) for s in per_shard) for k in extra_keys})
    reasons: dict[str, int] = {}
    for s in per_shard:
        for reason, n in s["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    summary["reasons"] = reasons
    summary["shards"] = {s["shard"]: s for s in per_shard}
    write_table(rejects_out, read_tables(rejects_paths), columns=["image_id", "path", "stage", "reason"])
    write_json(stats_out, summary)
    return summary
