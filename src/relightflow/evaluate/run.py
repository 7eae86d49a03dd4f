"""Evaluate a trained relighting model on an exported split: relight, score, summarize, draw.

Every triplet is relit by the model and by each configured baseline model (through
:mod:`relightflow.inference`, with the settings saved beside each model unless the ``evaluate`` config
gives one); the ``identity`` baseline returns the input unchanged, so every number has a reference, and the
``target`` row re-measures the real target: the ceiling of instruction agreement. Every image's lighting is
measured the way its instruction was made (:class:`~relightflow.evaluate.instruction.Measurement`: the
caption's mask, size and measure version, carried by the dataset). Every mean has its n and a bootstrap
interval, and each system is compared with identity image by image (:mod:`relightflow.evaluate.summary`).
Outputs: predictions (PNG per system and triplet), a per-image metrics table (one row per triplet and
system), the summary JSON, an HTML page, a bar chart, a comparison grid, rejects and stats (triplets in =
scored + rejected).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relightflow.captions.run import MEASURE_VERSION
from relightflow.devices import pick_device
from relightflow.evaluate.data import Triplet, iter_triplets
from relightflow.evaluate.grids import save_grid
from relightflow.evaluate.instruction import Measurement, instruction_following, load_clip
from relightflow.evaluate.metrics import image_metrics, load_lpips
from relightflow.evaluate.summary import plot_summary, summarize, write_html
from relightflow.images import save_image
from relightflow.inference import OVERRIDABLE, NonFiniteOutput, Relighter, load, resize
from relightflow.manifest import Reject, write_json, write_rejects, write_table
from relightflow.shards import Stats

log = logging.getLogger(__name__)

STAGE = "evaluate"
IDENTITY, TARGET = "identity", "target"
OUTPUTS = ("metrics", "table", "html", "plot", "grid", "predictions", "rejects", "stats")


def relight_all(name: str, relighter: Relighter, triplets: list[Triplet]) -> dict[str, np.ndarray | str]:
    """Per key: the uint8 prediction at the input's size, or the reason it failed."""
    results: dict[str, np.ndarray | str] = {}
    for t in triplets:
        # a model that fails (out of memory, device error) fails the job: never a silent reject
        try:
            results[t.key] = relighter(t.input, t.instruction)
        except NonFiniteOutput as e:  # a diverged model's output for this image
            results[t.key] = f"relight failed ({name}): {e}"
    return results


def _scalar_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in meta.items() if v is None or isinstance(v, str | int | float | bool | np.generic)
    }


class Evaluation:
    """State of one evaluation run: models, optional scorers, accumulated rows and grid samples."""

    def __init__(
        self, systems: dict[str, Relighter], cfg: Mapping[str, Any], out: Mapping[str, str], device: str
    ):
        self.systems, self.cfg, self.out = systems, cfg, out
        self.lpips, self.lpips_reason = load_lpips(bool(cfg["lpips"]), cfg["lpips_net"], device)
        self.clip, self.clip_reason = load_clip(cfg["clip"], device)
        for reason in (self.lpips_reason, self.clip_reason):
            if reason:
                log.info("skipped: %s", reason)
        self.rows: list[dict[str, Any]] = []
        self.rejects: list[Reject] = []
        self.grid_rows: list[list[np.ndarray]] = []
        self.grid_captions: list[str] = []
        self.seconds: dict[str, float] = defaultdict(float)
        self.measured_as: Counter = Counter()  # how the triplets' instructions were measured

    def measurement(self, t: Triplet) -> Measurement:
        """How ``t``'s instruction was measured (the dataset's provenance columns), counted for the summary."""
        version, side = t.meta.get("measure_version"), t.meta.get("measure_side")
        side = int(side) if side is not None and side == side else None
        self.measured_as.update({
            "with_mask" if t.mask is not None else "without_mask": 1,
            f"version {version or 'unknown'}": 1,
            "version_mismatch" if version and version != MEASURE_VERSION else "version_ok": 1,
            "enlarged" if side and max(t.target.shape[:2]) < side else "not_enlarged": 1,
        })  # fmt: skip
        return Measurement(t.mask, side, version)

    def score(self, t: Triplet, system: str, image: np.ndarray, prediction_path: str | None,
              measurement: Measurement) -> dict[str, Any]:  # fmt: skip
        """One metrics row of ``image`` (a system's output for ``t``)."""
        row = {"key": t.key, **_scalar_meta(t.meta), "instruction": t.instruction, "system": system,
               "prediction_path": prediction_path}  # fmt: skip
        if system != TARGET:
            row.update(image_metrics(image, t.target))
            if self.lpips is not None:
                row["lpips"] = self.lpips(image, t.target)
        row.update(instruction_following(image, t.meta.get("light_direction"), t.meta.get("color_temperature"),
                                         measurement))  # fmt: skip
        return row

    def add_batch(self, triplets: list[Triplet], stats: Stats) -> None:
        """Relight, save and score a batch of triplets."""
        outputs: dict[str, dict[str, np.ndarray | str]] = {}
        for name, relighter in self.systems.items():
            t0 = time.perf_counter()
            outputs[name] = relight_all(name, relighter, triplets)
            self.seconds[name] += time.perf_counter() - t0
        for t in triplets:
            failed = [o[t.key] for o in outputs.values() if isinstance(o[t.key], str)]
            if failed:
                self._reject(t.meta, failed[0], stats)
                continue
            try:
                self._add(t, {name: o[t.key] for name, o in outputs.items()})
            except ValueError as e:  # e.g. an image too small to measure its lighting
                self._reject(t.meta, f"scoring failed: {e}", stats)
                continue
            stats.n_kept += 1

    def _add(self, t: Triplet, predictions: dict[str, np.ndarray]) -> None:
        t0 = time.perf_counter()
        size = t.target.shape[1::-1]  # scored at the target's size
        predictions = {name: resize(image, size) for name, image in predictions.items()}
        images = {**predictions, IDENTITY: resize(t.input, size), TARGET: t.target}
        measurement, rows = self.measurement(t), {}
        for system, image in images.items():
            path = None
            if system in predictions:
                path = str(Path(self.out["predictions"]) / system / f"{t.key}.png")
                save_image(path, image)
            rows[system] = self.score(t, system, image, path, measurement)
        if self.clip is not None:
            names = [s for s in images if s != TARGET]
            scores = self.clip.score([t.input] * len(names), [images[s] for s in names], [t.target] * len(names),
                                     [t.instruction] * len(names))  # fmt: skip
            for system, s in zip(names, scores, strict=True):
                rows[system].update(s)
        self.rows.extend(rows.values())
        self.seconds["scoring"] += time.perf_counter() - t0
        if len(self.grid_rows) < int(self.cfg["grid_rows"]):
            self.grid_rows.append([t.input, *predictions.values(), t.target])
            self.grid_captions.append(f"{t.key} [{t.meta.get('degradation', '?')}]: {t.instruction}")

    def _reject(self, meta: dict[str, Any], reason: str, stats: Stats) -> None:
        self.rejects.append(Reject(str(meta.get("image_id", meta.get("key", ""))), str(meta.get("path", "")),
                                   STAGE, reason))  # fmt: skip
        stats.reject(reason)
        log.warning("rejected %s: %s", meta.get("key"), reason)

    def run(self, dataset_dir: str | os.PathLike, stats: Stats) -> None:
        for batch in iter_triplets(dataset_dir, int(self.cfg["batch_size"]), self.cfg["num_images"]):
            stats.n_in += len(batch)
            good = [item for item in batch if isinstance(item, Triplet)]
            for item in batch:
                if not isinstance(item, Triplet):
                    self._reject(*item, stats)
            if good:
                self.add_batch(good, stats)
            log.info("%d triplets scored, %d rejected", stats.n_kept, stats.n_rejected)

    def measurement_info(self) -> dict[str, Any]:
        """How the agreements were measured, for ``metrics.json``: function, version, triplets with a mask."""
        counts = self.measured_as
        return {"function": "relightflow.captions.measure.measure_lighting", "version": MEASURE_VERSION,
                "dataset_versions": {k[8:]: v for k, v in sorted(counts.items()) if k.startswith("version ")},
                "with_mask": counts["with_mask"], "without_mask": counts["without_mask"],
                "version_mismatch": counts["version_mismatch"], "enlarged": counts["enlarged"]}  # fmt: skip

    def write(self, stats: Stats, extra: dict[str, Any], seed: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        names = [*self.systems, IDENTITY, TARGET]
        table = pd.DataFrame(self.rows)
        write_table(self.out["table"], table, columns=["key", "system"])
        n_kept = max(stats.n_kept, 1)
        extra = {**extra, "n_rejected": stats.n_rejected, "measurement": self.measurement_info(),
                 "lpips": {"enabled": self.lpips is not None, "skipped_reason": self.lpips_reason},
                 "clip": {"enabled": self.clip is not None, "skipped_reason": self.clip_reason},
                 "seconds_per_image": {k: round(v / n_kept, 4) for k, v in self.seconds.items()}}  # fmt: skip
        summary = summarize(table, names, extra, seed) if len(table) else {"n_images": 0, "systems": names,
                                                                             "metrics": {}, **extra}  # fmt: skip
        summary["seconds_summary"] = round(time.perf_counter() - t0, 3)
        write_json(self.out["metrics"], summary)
        write_html(self.out["html"], summary, self.notes(extra))
        plot_summary(self.out["plot"], summary)
        columns = ["input", *self.systems, "target"]
        save_grid(self.out["grid"], self.grid_rows, self.grid_captions, columns)
        write_rejects(self.out["rejects"], self.rejects)
        stats.write(self.out["stats"])
        return summary

    def notes(self, extra: dict[str, Any]) -> list[str]:
        """The lines under the verdict on the HTML page: what the systems are, how lighting was measured."""
        m = extra["measurement"]
        notes = [f"model: {extra.get('model')}", "identity: the input returned unchanged; target (ceiling): the real "
                 "target re-measured against its own instruction — a perfect model scores this, no higher.",
                 f"Lighting measured with {m['function']} ({m['version']}) as each instruction was made: "
                 f"{m['with_mask']} triplets with the caption's subject mask, {m['without_mask']} without one "
                 "(the caption had none), at the caption's measuring size."]  # fmt: skip
        if m["version_mismatch"]:
            notes.append(f"WARNING: {m['version_mismatch']} triplets were captioned with another measure version "
                         f"({m['dataset_versions']}) than this evaluation's ({m['version']}): the target row "
                         "shows what that costs.")  # fmt: skip
        if m["enlarged"]:
            notes.append(f"{m['enlarged']} triplets are exported smaller than their caption measured them "
                         "(dataset.resolution below the measuring size): their images are enlarged to be measured "
                         "and lose detail; the target row shows what that costs.")  # fmt: skip
        notes += [f"{k} skipped: {v['skipped_reason']}" for k, v in extra.items()
                  if isinstance(v, dict) and v.get("skipped_reason")]  # fmt: skip
        return notes


def load_systems(
    model_dir: str | os.PathLike, cfg: Mapping[str, Any], seed: int, device: str
) -> dict[str, Relighter]:
    """The trained model, then every baseline model of ``evaluate.baselines`` ({name, path, overrides})."""
    systems = {"model": load(model_dir, device, cfg, seed)}
    for baseline in cfg["baselines"]:
        systems[baseline["name"]] = load(baseline["path"], device, {**cfg, **baseline}, seed)
    return systems


def evaluate_split(dataset_dir: str | os.PathLike, model_dir: str | os.PathLike, out: Mapping[str, str],
                   cfg: Mapping[str, Any], seed: int, device: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Evaluate ``model_dir`` on the split in ``dataset_dir``; write every file of ``out`` (:data:`OUTPUTS`)."""
    missing = [k for k in OUTPUTS if k not in out]
    if missing:
        raise KeyError(f"missing output paths: {missing}")
    device = pick_device(device or cfg["device"])
    Path(out["predictions"]).mkdir(parents=True, exist_ok=True)
    systems = load_systems(model_dir, cfg, seed, device)
    evaluation = Evaluation(systems, cfg, out, device)
    stats = Stats(STAGE, Path(dataset_dir).name)
    evaluation.run(dataset_dir, stats)
    params = {name: {k: getattr(r.settings, k) for k in OVERRIDABLE} for name, r in systems.items()}
    extra = {"model": str(model_dir), "split": Path(dataset_dir).name, "device": device,
             "params": params["model"], "baseline_params": {k: v for k, v in params.items() if k != "model"},
             "seed": seed}  # fmt: skip
    summary = evaluation.write(stats, extra, seed)
    log.info("evaluation: %s", summary.get("metrics"))
    if summary.get("verdict"):
        log.info("%s", summary["verdict"])
    return summary
