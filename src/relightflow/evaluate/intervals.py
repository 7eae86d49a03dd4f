"""How sure each number of the evaluation is: seeded bootstrap intervals of means and of paired differences.

Every mean comes with its ``n`` (rows that have the value: an agreement exists only where the instruction
states that attribute) and a percentile bootstrap interval (:data:`LEVEL`, :data:`RESAMPLES` resamples,
``scipy.stats.bootstrap``). The resampling unit is the image (``image_id``): an image's variants share
target, instruction and mask, so they are not independent observations; each resample draws images and
averages all their rows. Systems are compared on the same images by a paired bootstrap of the per-triplet
difference (system minus identity), which removes the spread between images that both share. The random
draws are seeded from the evaluation seed and the names of what is estimated, so a rerun gives the same
interval and two metrics never share draws.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

LEVEL = 0.95
RESAMPLES = 2000
BATCH = 250  # resamples drawn at once (bounds memory: BATCH x images floats)
MIN_CELL = 5  # group cells (per degradation, direction, temperature) with fewer rows are hidden


@dataclass(frozen=True)
class Estimate:
    """A mean with its row count and bootstrap interval (None when fewer than two images carry it)."""

    n: int
    mean: float
    low: float | None
    high: float | None

    def interval(self) -> list[float] | None:
        return None if self.low is None else [round(self.low, 5), round(self.high, 5)]


def seeded(seed: int, *names: str) -> np.random.Generator:
    """A generator drawn from the evaluation seed and the names of what is estimated."""
    return np.random.default_rng([int(seed), *(zlib.crc32(n.encode("utf-8")) for n in names)])


def _ratio(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    return sums.sum(axis=axis) / counts.sum(axis=axis)


def bootstrap_mean(values: pd.Series | np.ndarray, units: pd.Series | np.ndarray, rng: np.random.Generator
                   ) -> Estimate | None:  # fmt: skip
    """Mean of the non-missing ``values`` with a bootstrap interval over the resampling ``units``
    (one label per value: rows with the same label are drawn together); None when no value is present."""
    v = pd.to_numeric(pd.Series(values, dtype="object"), errors="coerce").to_numpy(dtype=float)
    u = np.asarray(units)
    keep = ~np.isnan(v)
    v, u = v[keep], u[keep]
    if not len(v):
        return None
    _, index = np.unique(u.astype(str), return_inverse=True)
    sums, counts = np.bincount(index, weights=v), np.bincount(index).astype(float)
    mean = float(v.mean())
    if len(sums) < 2:
        return Estimate(len(v), mean, None, None)
    result = bootstrap((sums, counts), _ratio, paired=True, vectorized=True, n_resamples=RESAMPLES, batch=BATCH,
                       confidence_level=LEVEL, method="percentile", rng=rng)  # fmt: skip
    ci = result.confidence_interval
    return Estimate(len(v), mean, float(ci.low), float(ci.high))


def paired_differences(frame: pd.DataFrame, metric: str, system: str, reference: str) -> pd.DataFrame:
    """Per triplet (``key``, ``image_id``): ``metric`` of ``system`` minus that of ``reference``, where both
    have it."""
    wide = frame[frame["system"].isin([system, reference])].pivot_table(
        index=["key", "unit"], columns="system", values=metric, aggfunc="first", dropna=False
    )
    if system not in wide or reference not in wide:
        return pd.DataFrame(columns=["unit", "difference"])
    diff = (wide[system].astype(float) - wide[reference].astype(float)).dropna()
    return diff.rename("difference").reset_index()[["unit", "difference"]]


def verdict(estimate: Estimate | None, higher_is_better: bool = True) -> str:
    """``better`` / ``worse`` when the whole interval of the difference lies on one side of 0,
    ``no difference`` when it straddles 0, ``too few images`` without an interval."""
    if estimate is None or estimate.low is None:
        return "too few images"
    if estimate.low > 0 or estimate.high < 0:
        up = estimate.low > 0
        return "better" if up == higher_is_better else "worse"
    return "no difference"
