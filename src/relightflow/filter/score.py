"""Score one shard: stream its ingest manifest through the data path and a lighting scorer.

Backends (config ``filter.backend``) share one small interface: ``decode_side`` and ``shape`` (what the
data path decodes to), ``prepare(PIL image) -> array`` (runs in the DataLoader workers), ``score(batch)
-> columns`` (one call per batch, ``lighting_score`` plus backend columns), ``columns`` and ``info()``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import numpy as np
import pandas as pd

from relightflow.filter import stats as lighting_stats
from relightflow.filter.data import Batch, iter_prepared
from relightflow.images import resize_max_side
from relightflow.manifest import Reject, StageStats, write_rejects, write_table

log = logging.getLogger(__name__)

SCORE_COLUMNS = [
    "image_id",
    "path",
    "lighting_score",
    "shard",
    "width",
    "height",
    "backend",
    "model",
    "phash",
]
STATS_VERSION = "stats-v1"


def stats_features(img: np.ndarray, max_side: int) -> np.ndarray:
    """The ``STAT_NAMES`` statistics of a decoded image, as a float vector (runs in a decode worker)."""
    measured = lighting_stats.measure(resize_max_side(img, max_side))
    return np.array([measured[k] for k in lighting_stats.STAT_NAMES], dtype=np.float64)


class StatsScorer:
    """Offline backend: the documented statistics formula of :mod:`relightflow.filter.stats`."""

    name = "stats"
    model_name = STATS_VERSION
    columns = list(lighting_stats.STAT_NAMES)

    def __init__(self, cfg: dict[str, Any]):
        self.max_side = int(cfg.get("max_side", lighting_stats.ANALYSIS_SIDE))
        self.decode_side = self.max_side
        self.shape = (len(lighting_stats.STAT_NAMES),)
        self.prepare = functools.partial(stats_features, max_side=self.max_side)

    pin_memory = False

    def score(self, data) -> dict[str, Any]:
        data = np.asarray(data)
        measured = {k: data[:, i] for i, k in enumerate(lighting_stats.STAT_NAMES)}
        return {"lighting_score": lighting_stats.score_from_stats(measured), **measured}

    def info(self) -> dict[str, Any]:
        return {"model": STATS_VERSION, "max_side": self.max_side}


def make_scorer(backend: str, cfg: dict[str, Any]):
    """The scorer registered under ``backend`` (``clip`` | ``stats`` | ``clip+stats``), built from its config
    section (for ``clip+stats``: :func:`relightflow.filter.combined.backend_config`)."""
    if backend == "stats":
        return StatsScorer(cfg)
    if backend == "clip":
        from relightflow.filter.clip import ClipScorer

        return ClipScorer(cfg)
    if backend == "clip+stats":
        from relightflow.filter.combined import ClipStatsScorer

        return ClipStatsScorer(cfg)
    raise ValueError(f"unknown filter.backend {backend!r} (expected 'clip', 'stats' or 'clip+stats')")


def _kept_frame(batch: Batch, scorer, shard: str) -> pd.DataFrame:
    kept = np.flatnonzero(batch.ok)
    frame = pd.DataFrame({k: [v[i] for i in kept] for k, v in batch.rows.items()})
    for col, values in scorer.score(batch.data).items():
        frame[col] = list(values) if col == "embedding" else values
    frame["phash"] = [batch.phashes[i] for i in kept]
    frame["shard"], frame["backend"], frame["model"] = shard, scorer.name, scorer.model_name
    return frame


def _batch_rejects(batch: Batch) -> list[Reject]:
    return [
        Reject(batch.rows["image_id"][i], batch.rows["path"][i], "filter", batch.errors[i])
        for i in np.flatnonzero(~batch.ok)
    ]


def score_shard(
    manifest: str | os.PathLike,
    shard: str,
    scores_path: str | os.PathLike,
    rejects_path: str | os.PathLike,
    stats_path: str | os.PathLike,
    backend: str,
    cfg: dict[str, Any],
    scorer=None,
) -> StageStats:
    """Score every image of a shard manifest; write scores, rejects (undecodable images) and stats."""
    scorer = scorer or make_scorer(backend, cfg)
    stage = StageStats("filter", shard)
    frames, rejects = [], []
    t0 = time.perf_counter()
    batches = iter_prepared(
        manifest, scorer.prepare, scorer.decode_side, scorer.shape,
        int(cfg.get("batch_size", 64)), int(cfg.get("num_workers", 2)), scorer.pin_memory,
    )  # fmt: skip
    for batch in batches:
        stage.n_in += len(batch)
        if batch.ok.any():
            frames.append(_kept_frame(batch, scorer, shard))
        stage.n_kept += int(batch.ok.sum())
        for reject in _batch_rejects(batch):
            rejects.append(reject)
            stage.reject(reject.reason)
    seconds = time.perf_counter() - t0
    table = pd.concat(frames, ignore_index=True).sort_values("row") if frames else pd.DataFrame()
    write_table(
        scores_path, table.drop(columns=["row"], errors="ignore"), columns=SCORE_COLUMNS + scorer.columns
    )
    write_rejects(rejects_path, rejects)
    stage.extra = {
        **scorer.info(),
        "backend": scorer.name,
        "images_per_s": round(stage.n_in / max(seconds, 1e-9), 2),
    }
    if stage.n_kept:
        stage.extra["score_quantiles"] = _quantiles(table["lighting_score"])
    stage.write(stats_path)
    log.info(
        "shard %s: %d scored, %d rejected, %.1f images/s",
        shard,
        stage.n_kept,
        stage.n_rejected,
        stage.extra["images_per_s"],
    )
    return stage


def _quantiles(scores: pd.Series) -> dict[str, float]:
    qs = scores.quantile([0.0, 0.1, 0.5, 0.9, 1.0])
    return {f"q{int(q * 100)}": round(float(v), 4) for q, v in qs.items()}
