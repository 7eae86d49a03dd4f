"""Per-stage survival and the pairs' change per degradation kind, for the report.

From the stats every stage writes (:class:`relightflow.shards.Stats`; a gathered summary holds them under
``stages.<name>``): images in -> kept -> rejected per stage, in pipeline order (ingest, filter, select,
segment, degrade, captions, dataset), with the share kept by each stage and of everything ingested, and
the top reject reasons. From the pairs manifests: the measured change of every kept pair per degradation
kind (:mod:`relightflow.pairs.quality`), drawn against the gate's bounds, with the variants the gate
dropped counted per kind and reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from relightflow.evaluate.summary import STYLE
from relightflow.manifest import atomic_path, read_json, read_tables, write_table, write_text
from relightflow.pairs.quality import COLUMNS as CHANGE_COLUMNS
from relightflow.shards import Stats, total

log = logging.getLogger(__name__)

STAGE_ORDER = ("ingest", "filter", "select", "segment", "degrade", "captions", "dataset")
UNITS = {"dataset": "pairs"}  # what a stage counts, where not images
TABLE_COLUMNS = ["stage", "unit", "n_in", "n_kept", "n_rejected", "survival", "of_ingested", "reasons"]
PLOTTED = (("delta_e_in", "mean ΔE2000 inside the subject", "min_delta_e"),
           ("ssim_in", "mean SSIM (L*) inside the subject", "min_ssim"),
           ("clipped_in", "share of the subject crushed / blown", "max_clipped"))  # fmt: skip


def stage_stats(data: Mapping[str, Any]) -> list[Stats]:
    """The stage stats in one stats JSON: a gathered summary (``stages``) or one stage's own file."""
    if "stages" in data:
        return [Stats.from_dict({**s, "shard": ""}) for s in data["stages"].values()]
    if "stage" in data and "n_in" in data:
        return [Stats.from_dict(data)]
    return []


def read_stages(paths: Iterable[str | os.PathLike]) -> dict[str, Stats]:
    """Per stage, the sum of its stats over ``paths`` (give each stage's shards or its gather, not both)."""
    return total(s for p in paths for s in stage_stats(read_json(p)))


def _order(names: Iterable[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(STAGE_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def _reasons(reasons: Mapping[str, int], top: int = 3) -> str:
    ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k}: {v}" for k, v in ranked[:top])
    return text + (f", +{len(ranked) - top} more" if len(ranked) > top else "")


def survival_table(stages: Mapping[str, Stats]) -> pd.DataFrame:
    """One row per stage in pipeline order: counts, ``survival`` (kept / in), ``of_ingested`` (kept / the
    first stage's images in; stages that count pairs have none) and the top reject reasons."""
    names = _order(stages)
    base = stages[names[0]].n_in if names else 0
    rows = []
    for name in names:
        s, unit = stages[name], UNITS.get(name, "images")
        rows.append({
            "stage": name, "unit": unit, "n_in": s.n_in, "n_kept": s.n_kept, "n_rejected": s.n_rejected,
            "survival": s.survival, "of_ingested": round(s.n_kept / base, 4) if base and unit == "images" else None,
            "reasons": _reasons(s.reasons),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def gate_table(degrade: Stats | None) -> pd.DataFrame:
    """Per degradation kind: pairs kept and variants dropped by the quality gate, per reason."""
    if degrade is None:
        return pd.DataFrame()
    kept = pd.Series(degrade.counts.get("kinds", {}), name="kept", dtype="int64").to_frame()
    dropped = pd.DataFrame(degrade.counts.get("dropped", {}))  # reason -> kind -> n; empty when none dropped
    table = kept.join(dropped, how="outer").fillna(0).astype("int64").rename_axis("kind").sort_index()
    if len(table):
        table["dropped_share"] = (1 - table["kept"] / table.sum(axis=1)).round(3)
    return table


def read_changes(manifests: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The kind and measured change of every kept pair (empty frame without manifests)."""
    return read_tables(manifests, ["degradation", *CHANGE_COLUMNS])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_survival(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Horizontal bars per stage (pipeline order, top down): images in, kept on top, annotated."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(table), 3) + 1.3), constrained_layout=True)
    if len(table):
        y = np.arange(len(table))[::-1]
        labels = [f"{r.stage} ({r.unit})" if r.unit != "images" else r.stage for r in table.itertuples()]
        ax.barh(y, table["n_in"], color="#d9d9d9", label="in")
        ax.barh(y, table["n_kept"], color="#4878cf", label="kept")
        for yi, r in zip(y, table.itertuples(), strict=True):
            share = f"{r.survival:.0%}" if r.survival is not None and not pd.isna(r.survival) else "-"
            ax.text(r.n_in, yi, f" {r.n_kept}/{r.n_in} ({share})", va="center", fontsize=8)
        ax.set_yticks(y, labels)
        ax.set_xlim(0, max(1, table["n_in"].max()) * 1.3)
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no stage statistics", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("count")
    ax.set_title("Survival per stage: in → kept")
    _save(fig, path)


def plot_changes(path: str | os.PathLike, changes: pd.DataFrame, bounds: Mapping[str, Mapping[str, float]],
                 gate: pd.DataFrame) -> None:  # fmt: skip
    """Per degradation kind, the change of every kept pair (box + points) in three panels, the gate's
    bounds as red ticks, and per kind the pairs kept and variants dropped."""
    plt = _pyplot()
    kinds = sorted(set(changes["degradation"].dropna()) | set(gate.index))
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.5 * max(len(kinds), 3) + 1.6), sharey=True,
                             constrained_layout=True)  # fmt: skip
    if not kinds:
        axes[1].text(0.5, 0.5, "no pairs measured", ha="center", va="center", transform=axes[1].transAxes)
    rng = np.random.default_rng(0)
    for ax, (column, title, bound) in zip(axes, PLOTTED, strict=True):
        for y, kind in enumerate(kinds):
            values = pd.to_numeric(changes.loc[changes["degradation"] == kind, column], errors="coerce").dropna()
            if len(values):
                ax.boxplot(values, positions=[y], vert=False, widths=0.5, showfliers=False)
                ax.scatter(values, y + rng.uniform(-0.18, 0.18, len(values)), s=8, alpha=0.5, color="#4878cf")
            if kind in bounds:
                ax.plot([bounds[kind][bound]] * 2, [y - 0.35, y + 0.35], color="#d62728", lw=2)
        ax.set_title(title, fontsize=9)
    labels = [f"{k}\n{_gate_label(gate, k)}" for k in kinds]
    axes[0].set_yticks(range(len(kinds)), labels, fontsize=8)
    fig.suptitle("Change from input to target per degradation kind (kept pairs; red: the gate's bound)")
    _save(fig, path)


def _gate_label(gate: pd.DataFrame, kind: str) -> str:
    if kind not in gate.index:
        return ""
    row = gate.loc[kind]
    return f"{int(row['kept'])} kept, {int(row.drop(['kept', 'dropped_share']).sum())} dropped"


def _html(table: pd.DataFrame, gate: pd.DataFrame) -> str:
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>Survival</title>", STYLE, "</head><body>",
             "<h3>Images in → kept, stage by stage</h3>",
             table.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.1%}")]  # fmt: skip
    if len(gate):
        parts += ["<h3>Pair quality gate: pairs kept and variants dropped per degradation kind</h3>",
                  gate.to_html(na_rep="")]  # fmt: skip
    return "".join(parts) + "</body></html>\n"


def write_survival(
    stats_paths: Sequence[str | os.PathLike],
    manifests: Sequence[str | os.PathLike],
    outputs: Mapping[str, str | os.PathLike],
    bounds: Mapping[str, Mapping[str, float]] | None = None,
) -> pd.DataFrame:
    """Write the survival ``table`` (Parquet), ``html`` and ``plot``, and the ``changes`` plot of the
    pairs' measured change per kind (``bounds``: config ``pairs.quality.bounds``); return the table."""
    stages = read_stages(stats_paths)
    table = survival_table(stages)
    gate = gate_table(stages.get("degrade"))
    write_table(outputs["table"], table, columns=TABLE_COLUMNS)
    write_text(outputs["html"], _html(table, gate))
    plot_survival(outputs["plot"], table)
    plot_changes(outputs["changes"], read_changes(manifests), bounds or {}, gate)
    log.info("survival of %d stages: %s", len(table), dict(zip(table["stage"], table["n_kept"], strict=True)))
    return table
