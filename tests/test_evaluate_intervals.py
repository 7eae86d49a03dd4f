"""Bootstrap intervals of the evaluation: seeded, resampling images (not rows), paired differences, verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relightflow.evaluate.intervals import Estimate, bootstrap_mean, paired_differences, seeded, verdict


def test_interval_is_seeded_and_covers_the_mean() -> None:
    values = np.random.default_rng(1).normal(10, 2, 60)
    units = np.arange(60)
    a = bootstrap_mean(values, units, seeded(7, "psnr"))
    assert a == bootstrap_mean(values, units, seeded(7, "psnr"))  # same seed and name: same interval
    assert a != bootstrap_mean(values, units, seeded(7, "ssim"))  # another name: other draws
    assert a.n == 60 and a.low < a.mean < a.high and a.mean == pytest.approx(values.mean())
    # the standard error of a mean of 60 draws with sd 2 is ~0.26: a 95 % interval ~ +-0.5
    assert 0.6 < a.high - a.low < 1.4


def test_missing_values_constant_values_and_single_images() -> None:
    agree = pd.Series([True, None, False, True, None, True], dtype="object")
    est = bootstrap_mean(agree, np.arange(6), seeded(0))
    assert est.n == 4 and est.mean == 0.75  # agreements count only where the instruction states one
    assert bootstrap_mean([1.0, 1.0, 1.0], [0, 1, 2], seeded(0)) == Estimate(3, 1.0, 1.0, 1.0)
    assert bootstrap_mean([0.3, 0.5], ["a", "a"], seeded(0)) == Estimate(2, 0.4, None, None)  # one image
    assert bootstrap_mean([None, None], [0, 1], seeded(0)) is None


def test_variants_of_one_image_are_resampled_together() -> None:
    """Three variants per image repeat the same value: no more information than one row per image, so the
    interval must not shrink (it would by ~sqrt(3) if rows were resampled independently)."""
    values = np.random.default_rng(2).normal(0, 1, 40)
    once = bootstrap_mean(values, np.arange(40), seeded(0))
    thrice = bootstrap_mean(np.repeat(values, 3), np.repeat(np.arange(40), 3), seeded(0))
    assert thrice.mean == pytest.approx(once.mean)
    assert thrice.high - thrice.low == pytest.approx(once.high - once.low, rel=1e-9)


def test_paired_difference_and_verdicts() -> None:
    frame = pd.DataFrame({
        "key": ["a", "a", "b", "b", "c", "c", "d"],
        "unit": ["a", "a", "b", "b", "c", "c", "d"],
        "system": ["model", "identity"] * 3 + ["model"],
        "psnr": [21.0, 20.0, 31.0, 30.0, 11.5, 10.0, 50.0],
    })  # fmt: skip
    diff = paired_differences(frame, "psnr", "model", "identity")
    assert diff["difference"].tolist() == [1.0, 1.0, 1.5]  # "d" has no identity row: not paired
    est = bootstrap_mean(diff["difference"], diff["unit"], seeded(0))
    assert verdict(est) == "better" and verdict(est, higher_is_better=False) == "worse"
    assert verdict(Estimate(5, 0.1, -0.2, 0.4)) == "no difference"
    assert verdict(Estimate(1, 0.1, None, None)) == "too few images" and verdict(None) == "too few images"
