"""Backend ``clip+stats``: CLIP's prompt-pair lighting score, gated by the measured exposure and clipping.

CLIP's antonym-prompt score (:mod:`relightflow.filter.clip`) judges the look of the lighting but barely
moves when a photo is 1.5 stops too dark or too bright, or has blown highlights; the statistics of
:mod:`relightflow.filter.stats` measure exactly that. The combined score is

    lighting_score = clip_score * exp(-strength * sum of the GATE_RULES costs of filter.stats)

so a well exposed photo keeps its CLIP score (the gate is ~1 for exposures within [-0.5, +1] stops and
little clipping) and a badly exposed or clipped one is pushed down whatever CLIP thinks. Both parts are
stored (``clip_score``, ``exposure_gate``, CLIP's similarities and the statistics), so the gate can be
re-weighted without re-encoding.

Each image is prepared once in the decode workers: the CLIP crop and the statistics travel together as
one float vector per image (``S*S*3`` crop values, then ``len(STAT_NAMES)`` statistics).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from relightflow.filter import stats as lighting_stats
from relightflow.images import resize_max_side

GATE_RULES = ("underexposed", "overexposed", "clipped_highlights", "clipped_shadows")


def exposure_gate(measured: dict[str, np.ndarray], strength: float = 1.0) -> np.ndarray:
    """``exp(-strength * sum of the GATE_RULES costs)``: 1 when exposure and clipping are fine."""
    costs = lighting_stats.penalties(measured)
    return np.exp(-strength * sum(costs[name] for name in GATE_RULES))


def prepare_combined(img: np.ndarray, size: int, stats_side: int) -> np.ndarray:
    """One float32 vector: the ``size`` CLIP crop's pixels, then the statistics (runs in a decode worker)."""
    from relightflow.filter.data import resize_center_crop

    crop = resize_center_crop(img, size).reshape(-1).astype(np.float32)
    measured = lighting_stats.measure(resize_max_side(img, stats_side))
    return np.concatenate([crop, np.array([measured[k] for k in lighting_stats.STAT_NAMES], np.float32)])


def backend_config(filter_cfg: dict[str, Any], backend: str) -> dict[str, Any]:
    """The config section a backend's scorer is built from: ``filter.<backend>``, or for ``clip+stats``
    the ``filter.clip`` section with ``filter.gate`` under ``gate``."""
    if backend == "clip+stats":
        return {**filter_cfg["clip"], "gate": filter_cfg["gate"]}
    return filter_cfg[backend]


class ClipStatsScorer:
    """Scores batches with CLIP and gates the scores with the measured exposure and clipping."""

    name = "clip+stats"

    def __init__(self, cfg: dict[str, Any]):
        from relightflow.filter.clip import ClipScorer  # torch: imported when a scorer is built, not by rules

        self.clip = ClipScorer(cfg)
        gate = cfg["gate"]
        self.strength, self.stats_side = float(gate["strength"]), int(gate["max_side"])
        self.model_name = f"{self.clip.model_name}+{lighting_stats.__name__.rsplit('.', 1)[-1]}"
        self.n_pixels = self.clip.size * self.clip.size * 3

    @property
    def decode_side(self) -> int:
        return max(self.clip.size, self.stats_side)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_pixels + len(lighting_stats.STAT_NAMES),)

    @property
    def pin_memory(self) -> bool:
        return self.clip.pin_memory

    @property
    def columns(self) -> list[str]:
        return ["clip_score", "exposure_gate", *self.clip.columns, *lighting_stats.STAT_NAMES]

    @property
    def prepare(self):
        return functools.partial(prepare_combined, size=self.clip.size, stats_side=self.stats_side)

    def score(self, data) -> dict[str, Any]:
        data = np.asarray(data, dtype=np.float32)
        crops = data[:, : self.n_pixels].reshape(len(data), self.clip.size, self.clip.size, 3)
        measured = {
            k: data[:, self.n_pixels + i].astype(np.float64) for i, k in enumerate(lighting_stats.STAT_NAMES)
        }
        out = self.clip.score(np.rint(crops).astype(np.uint8))
        gate = exposure_gate(measured, self.strength)
        clip_score = np.asarray(out.pop("lighting_score"), dtype=np.float64)
        return {
            "lighting_score": clip_score * gate,
            "clip_score": clip_score,
            "exposure_gate": gate,
            **out,
            **measured,
        }

    def info(self) -> dict[str, Any]:
        return {**self.clip.info(), "model": self.model_name, "gate_rules": list(GATE_RULES),
                "gate_strength": self.strength, "stats_max_side": self.stats_side}  # fmt: skip
