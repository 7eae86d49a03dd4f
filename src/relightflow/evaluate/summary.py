"""Aggregate per-image metrics (one row per image and system) into the summary JSON, an HTML table for the
report and a bar chart. Systems: ``model``, configured baselines, ``identity`` (the input returned as is)
and ``target`` (the real target: only its instruction agreement, the ceiling of the measurement)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from relightflow.manifest import atomic_path, write_text

METRICS = ["psnr", "ssim", "lpips", "direction_ok", "temperature_ok", "clip_direction", "clip_image"]
RENAME = {"direction_ok": "direction_agreement", "temperature_ok": "temperature_agreement"}
GROUPS = {"degradation": "by_degradation", "light_direction": "by_light_direction",
          "color_temperature": "by_color_temperature"}  # fmt: skip


def _means(frame: pd.DataFrame) -> dict[str, Any]:
    """Mean of every metric present (agreements as fractions, NaN-free JSON) and the count."""
    out: dict[str, Any] = {"n": int(len(frame))}
    for col in METRICS:
        if col in frame:
            values = pd.to_numeric(frame[col].astype("float64"), errors="coerce")
            if values.notna().any():
                out[RENAME.get(col, col)] = round(float(values.mean()), 5)
    return out


def by_system(frame: pd.DataFrame, systems: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{system: means}`` in the given system order."""
    return {s: _means(frame[frame["system"] == s]) for s in systems if (frame["system"] == s).any()}


def summarize(
    frame: pd.DataFrame, systems: Sequence[str], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``metrics.json`` content: overall means per system, and per degradation / caption attribute."""
    summary: dict[str, Any] = {"n_images": int(frame["key"].nunique()) if len(frame) else 0,
                               "systems": list(systems), "metrics": by_system(frame, systems)}  # fmt: skip
    for column, name in GROUPS.items():
        if column in frame and frame[column].notna().any():
            summary[name] = {
                str(value): by_system(group, systems)
                for value, group in frame.groupby(frame[column].fillna("unknown").astype(str), sort=True)
            }
    summary.update(extra or {})
    return summary


def metrics_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Overall means as a table: one row per system."""
    return pd.DataFrame.from_dict(summary["metrics"], orient="index").rename_axis("system")


def group_table(summary: dict[str, Any], name: str) -> pd.DataFrame:
    """Means of one grouping as a table indexed by (group value, system)."""
    rows = [
        {"group": value, "system": system, **means}
        for value, per_system in summary.get(name, {}).items()
        for system, means in per_system.items()
    ]
    return pd.DataFrame(rows).set_index(["group", "system"]) if rows else pd.DataFrame()


STYLE = """<style>
body{font-family:sans-serif;margin:1em} table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f2f2f2}
h3{margin:1em 0 .3em}
</style>"""


def write_html(path: str | os.PathLike, summary: dict[str, Any], notes: Sequence[str] = ()) -> None:
    """A self-contained HTML page with the overall table and one table per grouping."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Evaluation</title>",
        STYLE,
        "</head><body>",
    ]
    parts.append(f"<h2>Evaluation on {summary['n_images']} test images</h2>")
    parts += [f"<p>{n}</p>" for n in notes]
    parts += ["<h3>All test images</h3>", metrics_table(summary).to_html(float_format="%.4f", na_rep="")]
    for column, name in GROUPS.items():
        table = group_table(summary, name)
        if len(table):
            parts += [
                f"<h3>By {column.replace('_', ' ')}</h3>",
                table.to_html(float_format="%.4f", na_rep=""),
            ]
    write_text(path, "\n".join(parts) + "</body></html>\n")


def plot_summary(path: str | os.PathLike, summary: dict[str, Any]) -> None:
    """Bar charts: PSNR and SSIM per degradation and system; instruction agreement per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    table = group_table(summary, "by_degradation")
    for ax, metric in zip(axes[:2], ("psnr", "ssim"), strict=True):
        if len(table) and metric in table:
            wide = table[metric].unstack("system").dropna(axis=1, how="all")
            wide[[s for s in summary["systems"] if s in wide]].plot.bar(ax=ax, rot=30)
        ax.set_title(f"{metric.upper()} by degradation (higher is better)")
        ax.set_xlabel("")
    overall = metrics_table(summary) if summary["metrics"] else pd.DataFrame()
    cols = [c for c in ("direction_agreement", "temperature_agreement") if c in overall]
    if cols:
        overall[cols].plot.bar(ax=axes[2], rot=0, ylim=(0, 1))
    axes[2].set_title("Instruction agreement (measured lighting)")
    for ax in axes:
        if not ax.has_data():
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
