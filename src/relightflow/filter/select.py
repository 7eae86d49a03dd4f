"""Selection (a gather over all shards' scores): size filter, near-duplicate removal, cut, splits.

Order of operations: drop images below ``min_side``; drop near-duplicates (perceptual hash and/or CLIP
embedding), keeping the better-scored copy; keep the best images by top-K, threshold or top fraction
(ties broken by ``image_id``, so the result never depends on shard order); split train/val/test
**stratified by score**: the ranked list is cut into blocks of consecutive ranks and each block is
shared out by the ratios, so val and test span the whole score range, not its tail. Which image of a
block goes where is decided by a per-image random key (``image_rng(seed, image_id, "filter", "split")``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from relightflow.images import image_rng
from relightflow.manifest import read_tables, write_json, write_table
from relightflow.shards import Stats

log = logging.getLogger(__name__)

SELECTION_COLUMNS = [
    "image_id", "path", "lighting_score", "split", "rank", "shard", "width", "height", "backend", "model",
]  # fmt: skip
UNSELECTED_COLUMNS = ["image_id", "path", "lighting_score", "shard", "reason"]
SHARD_COLUMNS = ["image_id", "path", "lighting_score", "shard", "width", "height", "backend", "model"]
SPLITS = ("train", "val", "test")


def rank_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort best first; ties by ``image_id`` (deterministic whatever the shard order)."""
    return frame.sort_values(
        ["lighting_score", "image_id"], ascending=[False, True], kind="mergesort"
    ).reset_index(drop=True)


def _phash_ints(hashes: pd.Series) -> np.ndarray:
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def phash_duplicates(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Index of the earlier (better-ranked) kept near-duplicate for each hash, or -1.

    Pigeonhole: two 64-bit hashes within ``max_distance`` bits agree exactly on at least one of
    ``max_distance + 1`` bands, so only hashes sharing a band value are compared.
    """
    n_bands = max_distance + 1
    edges = np.linspace(0, 64, n_bands + 1).astype(int)
    buckets: list[dict[int, list[int]]] = [{} for _ in range(n_bands)]
    dup_of = np.full(len(hashes), -1, dtype=np.int64)
    for i, h in enumerate(hashes):
        keys = [
            (int(h) >> int(lo)) & ((1 << int(hi - lo)) - 1)
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)
        ]
        candidates = {j for band, key in enumerate(keys) for j in buckets[band].get(key, ())}
        if candidates:
            cand = np.fromiter(sorted(candidates), dtype=np.int64)
            dist = _popcount(np.bitwise_xor(hashes[cand], h))
            close = cand[dist <= max_distance]
            if len(close):
                dup_of[i] = close[0]
                continue
        for band, key in enumerate(keys):
            buckets[band].setdefault(key, []).append(i)
    return dup_of


def embedding_duplicates(embeddings: np.ndarray, min_cosine: float, chunk: int = 1024) -> np.ndarray:
    """Index of the earlier kept image whose embedding cosine is >= ``min_cosine``, or -1 (greedy, ranked)."""
    emb = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    dup_of = np.full(len(emb), -1, dtype=np.int64)
    kept: list[int] = []
    for start in range(0, len(emb), chunk):
        block = emb[start : start + chunk]
        prior = block @ emb[kept].T if kept else np.zeros((len(block), 0))
        inner = block @ block.T
        for i in range(len(block)):
            hits = np.flatnonzero(prior[i] >= min_cosine)
            if len(hits):
                dup_of[start + i] = kept[hits[0]]
                continue
            local = [j for j in np.flatnonzero(inner[i, :i] >= min_cosine) if dup_of[start + j] < 0]
            if local:
                dup_of[start + i] = start + local[0]
                continue
            kept.append(start + i)
    return dup_of


def cut_count(n: int, scores: np.ndarray, cfg: Mapping[str, Any]) -> int:
    """How many of the ``n`` ranked images to keep (top-K, threshold or top fraction; the strictest)."""
    keep = n
    k = cfg["num_images"]
    if k not in (None, "all"):
        if int(k) > n:
            log.warning("filter.num_images=%s but only %d eligible images: keeping all", k, n)
        keep = min(keep, int(k))
    if cfg["threshold"] is not None:
        keep = min(keep, int((scores >= float(cfg["threshold"])).sum()))
    if cfg["top_fraction"] is not None:
        keep = min(keep, math.ceil(float(cfg["top_fraction"]) * n))
    return keep


def split_labels(image_ids: Sequence[str], ratios: Mapping[str, float], seed: int) -> list[str]:
    """Split labels for images in rank order, stratified by rank blocks (see the module docstring)."""
    order = [*(s for s in SPLITS if s in ratios), *sorted(s for s in ratios if s not in SPLITS)]
    names = [s for s in order if float(ratios[s]) > 0]
    if not names:
        raise ValueError("filter.splits needs at least one positive ratio")
    weights = np.array([float(ratios[s]) for s in names])
    weights = weights / weights.sum()
    sequence = _deficit_sequence(len(image_ids), weights)
    block = max(1, math.ceil(1.0 / weights.min()))
    labels: list[str] = [""] * len(image_ids)
    for start in range(0, len(image_ids), block):
        idx = range(start, min(start + block, len(image_ids)))
        keys = [image_rng(seed, image_ids[i], "filter", "split").random() for i in idx]
        slots = sorted(sequence[start : start + len(idx)])
        for slot, i in zip(slots, sorted(idx, key=lambda i: keys[i - start]), strict=True):
            labels[i] = names[slot]
    return labels


def _deficit_sequence(n: int, weights: np.ndarray) -> list[int]:
    """Split index per rank: each rank goes to the split furthest below its share (smooth, exact totals)."""
    counts = np.zeros(len(weights))
    out = []
    for i in range(n):
        slot = int(np.argmax(weights * (i + 1) - counts))
        counts[slot] += 1
        out.append(slot)
    return out


def _drop(
    frame: pd.DataFrame, mask: np.ndarray, reasons: str | Sequence[str], dropped: list[pd.DataFrame]
) -> pd.DataFrame:
    gone = frame[mask].copy()
    gone["reason"] = reasons if isinstance(reasons, str) else list(np.asarray(reasons, dtype=object)[mask])
    dropped.append(gone)
    return frame[~mask].reset_index(drop=True)


def _dedup(frame: pd.DataFrame, dedup: Mapping[str, Any], dropped: list[pd.DataFrame]) -> pd.DataFrame:
    distance = dedup["phash_distance"]
    if distance is not None and len(frame) and "phash" in frame:
        dup_of = phash_duplicates(_phash_ints(frame["phash"]), int(distance))
        reasons = [f"near-duplicate (phash): of {frame['image_id'][j]}" if j >= 0 else "" for j in dup_of]
        frame = _drop(frame, dup_of >= 0, reasons, dropped)
    cosine = dedup["embedding_cosine"]
    if cosine is not None and len(frame):
        if "embedding" not in frame or frame["embedding"].isna().any():
            raise ValueError("filter.dedup.embedding_cosine needs filter.clip.store_embeddings: true")
        dup_of = embedding_duplicates(np.stack(frame["embedding"].to_numpy()), float(cosine))
        reasons = [f"near-duplicate (embedding): of {frame['image_id'][j]}" if j >= 0 else "" for j in dup_of]
        frame = _drop(frame, dup_of >= 0, reasons, dropped)
    return frame


def choose(scores: pd.DataFrame, cfg: Mapping[str, Any], seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(selected with split and rank, unselected with reason)`` from all scored rows."""
    frame = rank_order(scores)
    dropped: list[pd.DataFrame] = []
    min_side = int(cfg["min_side"])
    small = np.minimum(frame["width"].to_numpy(float), frame["height"].to_numpy(float)) < min_side
    frame = _drop(frame, small, f"too small: shorter side < {min_side} px", dropped)
    frame = _dedup(frame, cfg["dedup"], dropped)
    keep = cut_count(len(frame), frame["lighting_score"].to_numpy(), cfg)
    below = np.arange(len(frame)) >= keep
    frame = _drop(frame, below, "below the selection cut", dropped)
    frame["rank"] = np.arange(len(frame))
    frame["split"] = split_labels(frame["image_id"].tolist(), cfg["splits"], seed)
    unselected = (
        pd.concat(dropped, ignore_index=True) if dropped else pd.DataFrame(columns=UNSELECTED_COLUMNS)
    )
    return frame, rank_order(unselected) if len(unselected) else unselected


def select_images(
    score_paths: Sequence[str | os.PathLike],
    selected_paths: Mapping[str, str | os.PathLike],
    outputs: Mapping[str, str | os.PathLike],
    cfg: Mapping[str, Any],
    seed: int,
) -> dict[str, Any]:
    """The ``select`` checkpoint: read every shard's scores, choose, and write all selection outputs.

    ``selected_paths``: shard -> per-shard selection file (written for every shard, empty if none kept;
    rewritten only when its bytes change). It holds only per-image columns (no rank, no split): adding
    an image to one shard shifts ranks and rank-block splits everywhere, and must not rewrite, hence
    rerun, every other shard's downstream jobs. Splits are in ``selection`` and the per-split tables. ``outputs`` keys: ``selection``, ``unselected``, ``stats``,
    ``histogram``, ``contact_sheet`` and one per split name (``train``, ``val``, ``test``).
    """
    scores = read_tables(score_paths)
    if "lighting_score" not in scores:
        scores = pd.DataFrame(columns=[*SELECTION_COLUMNS[:3], "shard", "width", "height", "phash"])
    selected, unselected = (
        f.drop(columns=["embedding"], errors="ignore") for f in choose(scores, cfg, seed)
    )  # embeddings stay in the scores tables
    columns = SELECTION_COLUMNS
    write_table(outputs["selection"], selected, columns=columns)
    for split in SPLITS:
        if split in outputs:
            write_table(outputs[split], selected[selected["split"] == split], columns=columns)
    for shard, path in selected_paths.items():
        rows = selected.loc[selected["shard"] == shard, SHARD_COLUMNS].sort_values("image_id")
        write_table(path, rows, columns=SHARD_COLUMNS)
    write_table(outputs["unselected"], unselected, columns=UNSELECTED_COLUMNS)
    summary = _summary(scores, selected, unselected, cfg, seed)
    _plots(selected, unselected, summary, outputs)
    write_json(outputs["stats"], summary, only_if_changed=True)
    return summary


def _summary(scores, selected, unselected, cfg, seed) -> dict[str, Any]:
    stage = Stats("select", "all", n_in=len(scores), n_kept=len(selected))
    for reason in unselected.get("reason", []):
        stage.reject(reason)
    stage.check()
    split_scores = {s: selected.loc[selected["split"] == s, "lighting_score"] for s in SPLITS}
    return {
        "n_scored": len(scores), "n_selected": len(selected), "n_unselected": len(unselected),
        "reasons": stage.reasons, "cut_score": float(selected["lighting_score"].min()) if len(selected) else None,
        "splits": {s: {"n": len(v), "mean_score": round(float(v.mean()), 4) if len(v) else None} for s, v in split_scores.items()},
        "config": {k: cfg[k] for k in ("num_images", "threshold", "top_fraction", "min_side", "splits", "dedup")},
        "seed": seed, "stages": {"select": stage.to_dict()},
    }  # fmt: skip


def _plots(selected, unselected, summary, outputs) -> None:
    from relightflow.filter import plots

    if "histogram" in outputs:
        left_out = unselected.get("lighting_score", pd.Series(dtype=float))
        plots.score_histogram(
            outputs["histogram"], selected["lighting_score"], left_out, summary["cut_score"]
        )
    if "contact_sheet" in outputs:
        plots.contact_sheet(outputs["contact_sheet"], selected, unselected)
