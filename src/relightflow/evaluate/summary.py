"""Aggregate per-image metrics (one row per triplet and system) into the summary JSON, an HTML page for the
report and a chart. Systems: ``model``, configured baselines, ``identity`` (the input returned as is) and
``target`` (the real target: only its instruction agreement, the ceiling of that measurement).

Every mean carries its ``n`` and a seeded bootstrap interval (:mod:`relightflow.evaluate.intervals`): in a
cell of ``metrics.json`` the mean is ``<metric>``, the interval ``<metric>_ci`` and the count
``<metric>_n``. Per-group cells (by degradation, light direction, colour temperature) with fewer than
:data:`~relightflow.evaluate.intervals.MIN_CELL` rows keep only their counts (listed under ``hidden``).
Each system is compared with ``identity`` by a paired bootstrap of the per-triplet difference; the verdict
sentence says in one line whether the model beats doing nothing beyond the interval.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from relightflow.evaluate.intervals import (
    LEVEL,
    MIN_CELL,
    RESAMPLES,
    bootstrap_mean,
    paired_differences,
    seeded,
    verdict,
)
from relightflow.manifest import atomic_path, write_text

METRICS = ["psnr", "ssim", "lpips", "direction_ok", "temperature_ok", "clip_direction", "clip_image"]
RENAME = {"direction_ok": "direction_agreement", "temperature_ok": "temperature_agreement"}
LOWER_IS_BETTER = {"lpips"}
AGREEMENTS = ("direction_agreement", "temperature_agreement")
LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "direction_agreement": "direction agreement",
          "temperature_agreement": "temperature agreement", "clip_direction": "CLIP direction",
          "clip_image": "CLIP image"}  # fmt: skip
GROUPS = {"degradation": "by_degradation", "light_direction": "by_light_direction",
          "color_temperature": "by_color_temperature"}  # fmt: skip
IDENTITY, TARGET = "identity", "target"


def numeric(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with every metric as float (NaN where missing, agreements 0/1) and the resampling unit."""
    out = frame.copy()
    for col in METRICS:
        if col in out:
            out[col] = pd.to_numeric(out[col].astype("object"), errors="coerce").astype("float64")
    unit = out["image_id"] if "image_id" in out else out["key"]
    out["unit"] = unit.where(unit.notna(), out["key"]).astype(str)
    return out


def cell(frame: pd.DataFrame, seed: int, names: Sequence[str], min_n: int = 0) -> dict[str, Any]:
    """Row count and, per metric present, mean, interval and count; metrics with fewer than ``min_n``
    values keep only their count and are listed under ``hidden``."""
    out: dict[str, Any] = {"n": int(len(frame))}
    hidden = []
    for col in METRICS:
        if col not in frame:
            continue
        name = RENAME.get(col, col)
        est = bootstrap_mean(frame[col], frame["unit"], seeded(seed, *names, name))
        if est is None:
            continue
        out[f"{name}_n"] = est.n
        if est.n < min_n:
            hidden.append(name)
            continue
        out[name] = round(est.mean, 5)
        out[f"{name}_ci"] = est.interval()
    if hidden:
        out["hidden"] = hidden
    return out


def by_system(frame: pd.DataFrame, systems: Sequence[str], seed: int, names: Sequence[str] = (),
              min_n: int = 0) -> dict[str, dict[str, Any]]:  # fmt: skip
    """``{system: cell}`` in the given system order."""
    return {s: cell(frame[frame["system"] == s], seed, [*names, s], min_n)
            for s in systems if (frame["system"] == s).any()}  # fmt: skip


def compare(frame: pd.DataFrame, system: str, seed: int, reference: str = IDENTITY) -> dict[str, Any]:
    """Per metric: the paired difference ``system - reference`` (mean, interval, n) and its verdict."""
    out: dict[str, Any] = {}
    for col in METRICS:
        if col not in frame:
            continue
        name = RENAME.get(col, col)
        diff = paired_differences(frame, col, system, reference)
        est = bootstrap_mean(diff["difference"], diff["unit"], seeded(seed, "paired", system, reference, name))
        if est is not None:
            out[name] = {"n": est.n, "difference": round(est.mean, 5), "ci": est.interval(),
                         "verdict": verdict(est, name not in LOWER_IS_BETTER)}  # fmt: skip
    return out


def discrimination(frame: pd.DataFrame, seed: int) -> dict[str, Any]:
    """Can an agreement tell a perfect model from doing nothing? Per agreement, the paired difference
    ``target - identity``: ``informative`` only when its interval lies above 0 (on data whose degraded inputs
    already show the asked lighting — e.g. a background kept as is, where a masked caption measured the colour
    temperature — identity scores the ceiling and the agreement says nothing about a model)."""
    out = {}
    for name, c in compare(frame, TARGET, seed).items():
        if name in AGREEMENTS:
            out[name] = {"target_minus_identity": c["difference"], "ci": c["ci"], "n": c["n"],
                         "informative": c["verdict"] == "better"}  # fmt: skip
    return out


def discrimination_notes(summary: dict[str, Any]) -> list[str]:
    """A warning line per agreement that cannot tell the real target from doing nothing on this split."""
    return [f"{LABELS[name]} cannot tell a perfect model from doing nothing here: target − identity = "
            f"{_signed(d['target_minus_identity'])}" + (f" [{_signed(d['ci'][0])}, {_signed(d['ci'][1])}]" if d["ci"] else "")
            + f" (n={d['n']}); the degraded inputs already show what the instruction asks."
            for name, d in summary.get("discrimination", {}).items() if not d["informative"]]  # fmt: skip


def _signed(x: float) -> str:
    return f"{x:+.3g}"


def verdict_line(system: str, comparison: dict[str, Any], n_images: int) -> str:
    """One sentence: where ``system`` beats identity beyond the interval, where it is worse, where neither."""
    parts: dict[str, list[str]] = {"better": [], "worse": [], "no difference": [], "too few images": []}
    for name, c in comparison.items():
        interval = f" [{_signed(c['ci'][0])}, {_signed(c['ci'][1])}]" if c["ci"] else ""
        parts[c["verdict"]].append(f"{LABELS.get(name, name)} {_signed(c['difference'])}{interval}")
    head = (f"{system} vs identity (paired bootstrap, {LEVEL:.0%} interval, {n_images} images): "
            f"{'BEATS identity beyond the interval' if parts['better'] and not parts['worse'] else 'does NOT beat identity beyond the interval'}")  # fmt: skip
    tail = [f"{label} on {', '.join(items)}" for label, items in
            (("better", parts["better"]), ("worse", parts["worse"]), ("no difference", parts["no difference"]),
             ("too few images", parts["too few images"])) if items]  # fmt: skip
    return head + (" — " + "; ".join(tail) if tail else "") + "."


def summarize(frame: pd.DataFrame, systems: Sequence[str], extra: dict[str, Any] | None = None,
              seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """The ``metrics.json`` content: per system overall, per degradation / caption attribute, the paired
    comparisons with identity and the verdict line."""
    frame = numeric(frame)
    n_images = int(frame["unit"].nunique()) if len(frame) else 0
    summary: dict[str, Any] = {"n_images": int(frame["key"].nunique()) if len(frame) else 0,
                               "systems": list(systems), "metrics": by_system(frame, systems, seed)}  # fmt: skip
    summary["bootstrap"] = {"level": LEVEL, "resamples": RESAMPLES, "method": "percentile", "unit": "image_id",
                            "seed": seed, "min_cell_n": MIN_CELL, "n_units": n_images}  # fmt: skip
    compared = [s for s in systems if s not in (IDENTITY, TARGET)]
    if IDENTITY in systems and len(frame):
        summary["comparisons"] = {s: compare(frame, s, seed) for s in compared if (frame["system"] == s).any()}
        if summary["comparisons"]:
            first = next(iter(summary["comparisons"]))
            summary["verdict"] = verdict_line(first, summary["comparisons"][first], n_images)
        if TARGET in systems:
            summary["discrimination"] = discrimination(frame, seed)
    for column, name in GROUPS.items():
        if column in frame and frame[column].notna().any():
            summary[name] = {
                str(value): by_system(group, systems, seed, [column, str(value)], MIN_CELL)
                for value, group in frame.groupby(frame[column].fillna("(not stated)").astype(str), sort=True)
            }
    summary.update(extra or {})
    return summary


# ---------------------------------------------------------------- tables


def _fmt(value: float, metric: str) -> str:
    return f"{value:.3f}" if metric in AGREEMENTS or abs(value) < 10 else f"{value:.2f}"


def cell_text(cell_: dict[str, Any], metric: str) -> str:
    """``0.812 [0.74, 0.88] n=80``; ``n=3 (hidden)`` for a hidden cell; empty when absent."""
    n = cell_.get(f"{metric}_n")
    if n is None:
        return ""
    if metric not in cell_:
        return f"n={n} (hidden, n<{MIN_CELL})"
    ci = cell_.get(f"{metric}_ci")
    interval = f" [{_fmt(ci[0], metric)}, {_fmt(ci[1], metric)}]" if ci else ""
    return f"{_fmt(cell_[metric], metric)}{interval} n={n}"


def present_metrics(cells: Sequence[dict[str, Any]]) -> list[str]:
    """Metric names that any cell carries, in :data:`METRICS` order."""
    names = [RENAME.get(c, c) for c in METRICS]
    return [m for m in names if any(f"{m}_n" in c for c in cells)]


def metrics_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Overall means as a table: one row per system (floats; intervals are in the JSON)."""
    return pd.DataFrame.from_dict(summary["metrics"], orient="index").rename_axis("system")


def text_table(per_system: dict[str, dict[str, Any]], metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """``{system: cell}`` as text cells (mean [interval] n), one row per system."""
    metrics = metrics or present_metrics(list(per_system.values()))
    return pd.DataFrame({s: {LABELS.get(m, m): cell_text(c, m) for m in metrics} for s, c in per_system.items()}
                        ).T.rename_axis("system")  # fmt: skip


def group_table(summary: dict[str, Any], name: str) -> pd.DataFrame:
    """One grouping as text cells indexed by (group value, system)."""
    groups = summary.get(name, {})
    cells = [c for per_system in groups.values() for c in per_system.values()]
    metrics = present_metrics(cells)
    frames = {value: text_table(per_system, metrics) for value, per_system in groups.items()}
    return pd.concat(frames, names=["group"]) if frames else pd.DataFrame()


def comparison_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Paired differences with identity: one row per (system, metric)."""
    rows = []
    for system, per_metric in summary.get("comparisons", {}).items():
        for metric, c in per_metric.items():
            ci = c["ci"]
            rows.append({"system": system, "metric": LABELS.get(metric, metric), "n": c["n"],
                         "difference": _signed(c["difference"]),
                         "interval": f"[{_signed(ci[0])}, {_signed(ci[1])}]" if ci else "",
                         "verdict": c["verdict"]})  # fmt: skip
    return pd.DataFrame(rows).set_index(["system", "metric"]) if rows else pd.DataFrame()


STYLE = """<style>
body{font-family:sans-serif;margin:1em} table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f2f2f2}
h3{margin:1em 0 .3em} .verdict{font-weight:bold}
</style>"""


def write_html(path: str | os.PathLike, summary: dict[str, Any], notes: Sequence[str] = ()) -> None:
    """A self-contained HTML page: the verdict line, instruction agreement (target ceiling next to the
    systems), every metric with its interval, the paired comparisons and one table per grouping."""
    boot = summary.get("bootstrap", {})
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>Evaluation</title>", STYLE, "</head><body>",
             f"<h2>Evaluation on {summary['n_images']} test triplets</h2>"]  # fmt: skip
    if summary.get("verdict"):
        parts.append(f"<p class='verdict'>{html.escape(summary['verdict'])}</p>")
    parts.append(f"<p>Cells: mean [{boot.get('level', LEVEL):.0%} bootstrap interval over images, "
                 f"{boot.get('resamples', RESAMPLES)} seeded resamples] n = rows with a value. An interval shrinks "
                 "to a point when every image has the same value (e.g. all agree): read it with its n. Group "
                 f"cells with fewer than {boot.get('min_cell_n', MIN_CELL)} rows are hidden.</p>")  # fmt: skip
    parts += [f"<p class='verdict'>WARNING: {html.escape(n)}</p>" for n in discrimination_notes(summary)]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    systems = summary["metrics"]
    if any(f"{m}_n" in c for c in systems.values() for m in AGREEMENTS):
        order = [s for s in (TARGET, *[s for s in systems if s not in (TARGET, IDENTITY)], IDENTITY) if s in systems]
        table = text_table({s: systems[s] for s in order}, [m for m in AGREEMENTS]).rename(
            index={TARGET: "target (ceiling)"})
        parts += ["<h3>Instruction agreement (re-measured as the instruction was made)</h3>", table.to_html()]
    if systems:
        parts += ["<h3>All metrics</h3>", text_table(systems).to_html()]
    comparisons = comparison_table(summary)
    if len(comparisons):
        parts += ["<h3>Paired difference with identity (system − identity)</h3>", comparisons.to_html()]
    for column, name in GROUPS.items():
        table = group_table(summary, name)
        if len(table):
            parts += [f"<h3>By {column.replace('_', ' ')}</h3>", table.to_html()]
    write_text(path, "\n".join(parts) + "</body></html>\n")


# ---------------------------------------------------------------- chart


def _value(cell_: dict[str, Any] | None, metric: str) -> tuple[float, list[float] | None]:
    return (cell_.get(metric, np.nan), cell_.get(f"{metric}_ci")) if cell_ else (np.nan, None)


def _bars(ax, labels: Sequence[str], series: dict[str, list[tuple[float, list[float] | None]]]) -> None:
    """Grouped bars with interval whiskers; ``series`` maps a system to one (mean, interval) per label."""
    width = 0.8 / max(len(series), 1)
    for i, (system, values) in enumerate(series.items()):
        means = np.array([m for m, _ in values], dtype=float)
        err = np.array([[m - ci[0], ci[1] - m] if ci and np.isfinite(m) else [0.0, 0.0] for m, ci in values]).T
        x = np.arange(len(labels)) + (i - (len(series) - 1) / 2) * width
        ax.bar(x, means, width, yerr=err, capsize=3, label=system)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=20)
    ax.legend(fontsize=8)


def plot_summary(path: str | os.PathLike, summary: dict[str, Any]) -> None:
    """Bar charts with interval whiskers: instruction agreement per system (the target's ceiling first),
    PSNR and SSIM per degradation and system (hidden cells left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    systems = summary["metrics"]
    order = [s for s in (TARGET, *[s for s in systems if s not in (TARGET, IDENTITY)], IDENTITY) if s in systems]
    agreements = [m for m in AGREEMENTS if any(m in systems[s] for s in order)]
    if agreements:
        series = {("target (ceiling)" if s == TARGET else s): [_value(systems[s], m) for m in agreements]
                  for s in order}  # fmt: skip
        _bars(axes[0], [LABELS[m] for m in agreements], series)
        axes[0].set_ylim(0, 1.05)
    axes[0].set_title(f"Instruction agreement ({LEVEL:.0%} interval)")
    groups = summary.get("by_degradation", {})
    scored = [s for s in summary["systems"] if s != TARGET]
    for ax, metric in zip(axes[1:], ("psnr", "ssim"), strict=True):
        labels = list(groups)
        series = {s: [_value(groups[g].get(s), metric) for g in labels] for s in scored}
        if any(np.isfinite(m) for values in series.values() for m, _ in values):
            hidden = [any(metric in (c or {}).get("hidden", []) for c in groups[g].values()) for g in labels]
            _bars(ax, [f"{g}\n(n<{MIN_CELL})" if h else g for g, h in zip(labels, hidden, strict=True)], series)
        ax.set_title(f"{metric.upper()} by degradation (higher is better)")
    for ax in axes:
        if not ax.has_data():
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
