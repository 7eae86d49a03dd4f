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
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from relightflow.filter import stats as lighting_stats
from relightflow.filter.data import Batch, iter_prepared
from relightflow.images import ImageError, resize_max_side
from relightflow.shards import Outcome, ShardStage, Stats

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
STATS_VERSION = "stats-v2"  # v2: metered exposure, no dead zones (scores still rank)


def stats_features(img: np.ndarray, max_side: int) -> np.ndarray:
    """The ``STAT_NAMES`` statistics of a decoded image, as a float vector (runs in a decode worker)."""
    if min(img.shape[:2]) < 3:
        raise ImageError(f"too small to measure: {img.shape[1]}x{img.shape[0]}")
    measured = lighting_stats.measure(resize_max_side(img, max_side))
    return np.array([measured[k] for k in lighting_stats.STAT_NAMES], dtype=np.float64)


class StatsScorer:
    """Offline backend: the documented statistics formula of :mod:`relightflow.filter.stats`."""

    name = "stats"
    model_name = STATS_VERSION
    columns = list(lighting_stats.STAT_NAMES)
    pin_memory = False

    def __init__(self, cfg: dict[str, Any]):
        self.max_side = int(cfg["max_side"])
        self.decode_side = self.max_side
        self.shape = (len(lighting_stats.STAT_NAMES),)
        self.prepare = functools.partial(stats_features, max_side=self.max_side)

    def score(self, data) -> dict[str, Any]:
        data = np.asarray(data)
        measured = {k: data[:, i] for i, k in enumerate(lighting_stats.STAT_NAMES)}
        return {"lighting_score": lighting_stats.score_from_stats(measured), **measured}

    def info(self) -> dict[str, Any]:
        return {"model": STATS_VERSION, "max_side": self.max_side}


BACKENDS = ("clip", "stats", "clip+stats")


def make_scorer(backend: str, cfg: dict[str, Any]):
    """The scorer registered under ``backend`` (:data:`BACKENDS`), built from its config section (for
    ``clip+stats``: :func:`relightflow.filter.combined.backend_config`)."""
    if backend == "stats":
        return StatsScorer(cfg)
    if backend == "clip":
        from relightflow.filter.clip import ClipScorer

        return ClipScorer(cfg)
    if backend == "clip+stats":
        from relightflow.filter.combined import ClipStatsScorer

        return ClipStatsScorer(cfg)
    raise ValueError(f"unknown filter.backend {backend!r} (expected one of {BACKENDS})")


class ScoreStage(ShardStage):
    """Score every image of a shard's ingest manifest with the configured backend.

    The manifest streams through DataLoader workers that decode at reduced size (:mod:`.data`); each
    batch arrives with the images that failed to decode flagged, and the scorer runs once per batch.
    """

    name = "filter"

    def __init__(self, manifest: str | os.PathLike, backend: str, cfg: dict[str, Any], scorer=None):
        super().__init__(manifest, cfg["batch_size"])
        self.backend, self.cfg, self.scorer = backend, cfg, scorer
        self.t0 = time.perf_counter()

    def open(self) -> None:
        self.scorer = self.scorer or make_scorer(self.backend, self.cfg)
        self.columns = SCORE_COLUMNS + list(self.scorer.columns)
        self.t0 = time.perf_counter()

    def items(self) -> Iterator[Batch]:
        s = self.scorer
        yield from iter_prepared(
            self.source, s.prepare, s.decode_side, s.shape, self.batch_size, int(self.cfg["num_workers"]),
            s.pin_memory,
        )  # fmt: skip

    def process_batch(self, batch: Batch) -> list[Outcome]:
        ids, paths = batch.rows["image_id"], batch.rows["path"]
        scored = _kept_frame(batch, self.scorer).to_dict("records") if batch.ok.any() else []
        rows = iter(scored)
        return [
            Outcome(str(ids[i]), str(paths[i]), rows=[next(rows)]) if batch.ok[i]
            else Outcome(str(ids[i]), str(paths[i]), reject=batch.errors[i])
            for i in range(len(batch))
        ]  # fmt: skip

    def table(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        frame = pd.DataFrame(rows)
        if frame.empty:
            return frame
        return frame.sort_values("row").drop(columns=["row"]).assign(shard=self.shard)

    def finish(self, stats: Stats, rows: list[dict[str, Any]]) -> None:
        seconds = time.perf_counter() - self.t0
        stats.info["images_per_s"] = round(stats.n_in / max(seconds, 1e-9), 2)
        if rows:
            stats.info["score_quantiles"] = _quantiles(pd.Series([r["lighting_score"] for r in rows]))

    def info(self) -> dict[str, Any]:
        return {**self.scorer.info(), "backend": self.scorer.name}


def _kept_frame(batch: Batch, scorer) -> pd.DataFrame:
    kept = np.flatnonzero(batch.ok)
    frame = pd.DataFrame({k: [v[i] for i in kept] for k, v in batch.rows.items()})
    for col, values in scorer.score(batch.data).items():
        frame[col] = list(values) if col == "embedding" else values
    frame["phash"] = [batch.phashes[i] for i in kept]
    frame["backend"], frame["model"] = scorer.name, scorer.model_name
    return frame


def _quantiles(scores: pd.Series) -> dict[str, float]:
    qs = scores.quantile([0.0, 0.1, 0.5, 0.9, 1.0])
    return {f"q{int(q * 100)}": round(float(v), 4) for q, v in qs.items()}
