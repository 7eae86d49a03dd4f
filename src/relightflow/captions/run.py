"""The ``caption`` stage on one shard: measure every image, ask the VLM (cached), render the instruction.

The instruction states a direction and colour temperature only as decided by :mod:`relightflow.captions.render`
(a confident measurement beats the VLM; an unsure direction is left out), and the ``light_direction`` /
``color_temperature`` columns are what the instruction states (None where it states nothing), so the
evaluation's re-measurement checks exactly what was asked. Per row: the VLM-vs-measurement agreement and
where the words came from; per shard, their counts in the stats.

Reads the shard's selected images (``image_id, path``) in batches and the subject masks from the
segments table (``image_id, mask_path``). Runs under the one shard driver (:mod:`relightflow.shards`):
an unreadable image or mask, or a reply that stays invalid after its re-asks, is a reject with its reason.
A request that still fails after its retries (service down, 429 storm) is the environment's failure: the
job fails once the shard is done — every success is cached, so the rerun asks only for the failures —
unless ``captions.max_failure_rate`` accepts that fraction of losses, recorded in the stats.
An error text is never stored as a caption.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relightflow.captions.cache import CaptionCache, cache_key
from relightflow.captions.endpoints import redact_logs
from relightflow.captions.measure import measure_lighting
from relightflow.captions.providers import Captioner, make_captioner
from relightflow.captions.providers.base import CaptionResult
from relightflow.captions.render import (
    check_template,
    combine,
    measured_fields,
    render_instruction,
    stated_attributes,
    template_for,
)
from relightflow.captions.schema import PROMPT_VERSION, LightingDescription, prompt_fingerprint
from relightflow.digests import file_digest
from relightflow.errors import BadInput, EnvironmentFailure
from relightflow.images import ImageError, load_mask, load_rgb
from relightflow.manifest import iter_batches, read_table
from relightflow.shards import Outcome, ShardStage, Stats, item_context

log = logging.getLogger(__name__)

STAGE = "captions"
MEASURE_VERSION = "measure-v2"  # v2: face-fit direction with per-axis confidences
MEASURED_KEYS = ("horizontal", "vertical", "direction", "backlit", "color_temperature", "warmth", "light_color",
                 "contrast", "hardness", "key", "light_type", "direction_confidence", "horizontal_confidence",
                 "vertical_confidence", "color_confidence", "light_azimuth", "light_elevation", "mask_used")  # fmt: skip
VLM_KEYS = ("light_source", "direction", "color_temperature", "hardness", "setting", "phrase")
COLUMNS = [
    "image_id", "path", "instruction", "source", "light_direction", "color_temperature", "prompt_version",
    "mask_path", "measure_version",
    "attributes_mode", "cache_hit", "agreement", "agreement_direction", "agreement_temperature",
    "direction_source", "temperature_source",
    *(f"measured_{k}" for k in MEASURED_KEYS), *(f"vlm_{k}" for k in VLM_KEYS),
]  # fmt: skip


@dataclass
class Item:
    """One readable image of the shard on its way through the stage."""

    image_id: str
    path: str
    image: np.ndarray
    mask_path: str = ""
    measured: dict[str, Any] = field(default_factory=dict)


def subject_found(prompt: Any) -> bool:
    """Whether a segmentation prompt means a subject was found: a detected face (``face``) or a
    text-prompted subject (``text:...``); not the prior box used when nothing was found, nor the frame."""
    return isinstance(prompt, str) and (prompt == "face" or prompt.startswith("text:"))


def read_mask_paths(segments_path: str | os.PathLike | None, policy: str) -> dict[str, str]:
    """image_id → mask path from the segments table, for the masks the measurement uses
    (``captions.measure_mask``): ``always`` every mask, ``auto`` only masks of a found subject
    (:func:`subject_found`; a table without a ``prompt`` column counts every mask as one), ``never`` none.
    A missing table or ``mask_path`` column: no masks."""
    if policy == "never" or not segments_path or not os.path.exists(segments_path):
        return {}
    df = read_table(segments_path)
    if "mask_path" not in df.columns:
        return {}
    prompts = df["prompt"] if "prompt" in df.columns else ["face"] * len(df)
    return {
        str(i): str(p)
        for i, p, prompt in zip(df["image_id"], df["mask_path"], prompts, strict=True)
        if isinstance(p, str) and p and (policy == "always" or subject_found(prompt))
    }


def load_item(image_id: str, path: str, mask_path: str | None, max_side: int) -> Item:
    """Decode and measure one image (with its subject mask); :class:`BadInput` when it cannot be used."""
    try:
        image = load_rgb(path, max_side=max_side)
    except ImageError as e:
        raise ImageError(f"unreadable image: {e}") from e
    mask = None
    if mask_path:
        try:
            mask = load_mask(mask_path)
        except ImageError as e:
            raise ImageError(f"mask unreadable: {e}") from e
        if abs(mask.shape[0] / mask.shape[1] - image.shape[0] / image.shape[1]) > 0.02:
            raise ImageError(f"mask {mask.shape} does not match the image {image.shape[:2]}")
    try:
        measured = measure_lighting(image, mask)
    except ValueError as e:  # an image too small or degenerate to measure
        raise ImageError(f"unmeasurable image: {e}") from e
    return Item(image_id, path, image, mask_path or "", measured)


def caption_key(captioner: Captioner, digest: str, image: np.ndarray, prompt_version: str) -> str:
    """The cache key of one image's answer: everything that changes it (:data:`cache.KEY_FIELDS`)."""
    return cache_key({
        "digest": digest, "image_size": list(image.shape[:2]), "provider": captioner.name,
        "model": captioner.model, "endpoint": captioner.endpoint,
        "prompt": f"{prompt_version}+{prompt_fingerprint()}",  # editing the prompt in code also re-captions
        "params": captioner.params(),
    })  # fmt: skip


def _describe_cached(
    captioner: Captioner, cache: CaptionCache, items: list[Item], prompt_version: str
) -> list[tuple[CaptionResult, bool]]:
    """(result, cache_hit) per item: cached answers first, the misses in one provider call."""
    keys = [caption_key(captioner, file_digest(it.path), it.image, prompt_version) for it in items]
    out: list[tuple[CaptionResult, bool] | None] = [None] * len(items)
    misses = []
    for i, key in enumerate(keys):
        hit = cache.get(key)
        if hit is not None:
            out[i] = (CaptionResult(LightingDescription.model_validate(hit["description"]), hit.get("raw", "")), True)
        else:
            misses.append(i)
    if misses:
        results = captioner.describe([items[i].image for i in misses])
        for i, result in zip(misses, results, strict=True):
            if result.ok:
                cache.put(keys[i], {"description": result.description.model_dump(), "raw": result.raw})
            out[i] = (result, False)
    return out  # type: ignore[return-value]


def caption_row(item: Item, cfg: dict[str, Any], source: str, result: CaptionResult | None,
                cache_hit: bool) -> dict[str, Any]:  # fmt: skip
    """The captions-table row of one image (instruction, the attributes it states, agreement, provenance)."""
    mode, min_conf = cfg["attributes"], cfg["min_confidence"]
    row: dict[str, Any] = {"image_id": item.image_id, "path": item.path, "source": source,
                           "prompt_version": cfg["prompt_version"], "cache_hit": cache_hit,
                           "mask_path": item.mask_path, "measure_version": MEASURE_VERSION,
                           **{f"measured_{k}": item.measured.get(k) for k in MEASURED_KEYS}}  # fmt: skip
    if result is None:
        fields = measured_fields(item.measured, min_conf)
        row.update(attributes_mode="measured", agreement=math.nan, temperature_source="measured",
                   direction_source="measured" if fields["direction"] else "none")  # fmt: skip
    else:
        vlm = result.description.model_dump()
        fields, record = combine(vlm, item.measured, mode, min_conf)
        row.update(attributes_mode=mode, **record, **{f"vlm_{k}": vlm[k] for k in VLM_KEYS})
    row["instruction"] = render_instruction(fields, template_for(cfg["provider"], cfg["template"]), cfg["max_chars"])
    row.update(stated_attributes(row["instruction"], fields))
    if not row["instruction"]:
        raise BadInput("caption failed: empty instruction after sanitising")
    return row


def provider_option(cfg: dict[str, Any], name: str) -> int:
    """An option of the provider's section when set there, else of the captions section."""
    own = cfg[cfg["provider"]][name] if cfg["provider"] != "measured" else None  # measured has no section
    return int(own if own is not None else cfg[name])


def decision_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How the shard's instructions were decided: VLM disagreements, measured wins, directions left out."""
    vlm_rows = [r for r in rows if r.get("vlm_direction") is not None]
    return {
        "direction_disagreements": sum(not r["agreement_direction"] for r in vlm_rows),
        "temperature_disagreements": sum(not r["agreement_temperature"] for r in vlm_rows),
        "direction_from_measured": sum(r["direction_source"] == "measured" for r in rows),
        "direction_left_out": sum(r["direction_source"] == "none" for r in rows),
        "temperature_from_measured": sum(r["temperature_source"] == "measured" for r in rows),
    }


class CaptionStage(ShardStage):
    """Caption every selected image of a shard (see the module docstring)."""

    name = STAGE
    columns = COLUMNS

    def __init__(self, selected: str | os.PathLike, segments: str | os.PathLike | None, cfg: dict[str, Any],
                 cache_dir: str | os.PathLike = "results/cache", captioner: Captioner | None = None,
                 max_concurrency: int | None = None):  # fmt: skip
        """``max_concurrency``: requests in flight granted to the job (its ``api_requests`` resource)."""
        super().__init__(selected, provider_option(cfg, "batch_size"))
        self.cfg, self.segments, self.captioner, self.owned = cfg, segments, captioner, captioner is None
        self.max_concurrency = max_concurrency
        self.cache = CaptionCache(cache_dir, enabled=cfg["cache"])
        self.max_side = provider_option(cfg, "max_side")
        self.request_failures = 0

    def open(self) -> None:
        redact_logs()  # no credentials of a base URL in any line of the job's log
        check_template(template_for(self.cfg["provider"], self.cfg["template"]))
        self.masks = read_mask_paths(self.segments, self.cfg["measure_mask"])
        if self.owned:
            try:
                self.captioner = make_captioner(self.cfg, self.max_concurrency)
            except Exception as e:  # a model or client that cannot be built fails the job
                raise EnvironmentFailure(f"cannot start captions provider {self.cfg['provider']!r}: {e}") from e
        self.caption_source = (f"{self.captioner.name}/{self.captioner.model}" if self.captioner
                               else f"measured/{MEASURE_VERSION}")  # fmt: skip

    def close(self) -> None:
        if self.owned and self.captioner is not None:
            self.captioner.close()

    def items(self) -> Iterator[list[dict[str, Any]]]:
        for frame in iter_batches(self.source, self.batch_size, columns=["image_id", "path"]):
            yield frame.to_dict("records")

    def process_batch(self, rows: list[dict[str, Any]]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        items: dict[int, Item] = {}
        for i, row in enumerate(rows):
            image_id, path = str(row["image_id"]), str(row["path"])
            with item_context(self.name, image_id, path):
                try:
                    items[i] = load_item(image_id, path, self.masks.get(image_id), self.max_side)
                except BadInput as e:
                    outcomes[i] = Outcome(image_id, path, reject=str(e))
        order = sorted(items)
        results = (_describe_cached(self.captioner, self.cache, [items[i] for i in order], self.cfg["prompt_version"])
                   if self.captioner else [(None, False)] * len(order))  # fmt: skip
        for i, (result, hit) in zip(order, results, strict=True):
            outcomes[i] = self._outcome(items[i], result, hit)
        return [outcomes[i] for i in range(len(rows))]

    def _outcome(self, item: Item, result: CaptionResult | None, hit: bool) -> Outcome:
        if result is not None and not result.ok:
            self.request_failures += result.request_failed
            return Outcome(item.image_id, item.path, reject=f"caption failed: {result.error}")
        with item_context(self.name, item.image_id, item.path):
            try:
                return Outcome(item.image_id, item.path, rows=[caption_row(item, self.cfg, self.caption_source, result, hit)])
            except BadInput as e:
                return Outcome(item.image_id, item.path, reject=str(e))

    def finish(self, stats: Stats, rows: list[dict[str, Any]]) -> None:
        stats.counts.update({**self.cache.stats(), "request_failures": self.request_failures, **decision_counts(rows),
                             **(self.captioner.counters.as_dict() if self.captioner else {})})  # fmt: skip
        allowed = self.cfg["max_failure_rate"]
        if self.request_failures and self.request_failures > allowed * stats.n_in:
            raise EnvironmentFailure(
                f"captions {self.shard}: {self.request_failures}/{stats.n_in} requests still failed after their "
                f"retries (captions.max_failure_rate {allowed}); reasons {stats.reasons}. Every success is "
                "cached: rerun when the provider is healthy and only the failures are asked again."
            )

    def info(self) -> dict[str, Any]:
        return {"provider": self.cfg["provider"], "source": self.caption_source, "prompt_version": self.cfg["prompt_version"],
                "prompt": f"{PROMPT_VERSION}+{prompt_fingerprint()}", "attributes": self.cfg["attributes"],
                "template": template_for(self.cfg["provider"], self.cfg["template"])}  # fmt: skip
