"""Per-rule runtimes of a workflow run, from the ``benchmark:`` TSV files Snakemake writes.

Files live under ``results/benchmarks/<rule>.tsv`` or ``results/benchmarks/<rule>/<wildcards>.tsv``; each
has one line per repeat with wall seconds ``s``, ``max_rss`` (MB) and ``cpu_time`` (s).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from relightflow.evaluate.summary import STYLE
from relightflow.manifest import atomic_path, write_table, write_text

log = logging.getLogger(__name__)

JOB_COLUMNS = ["rule", "job", "seconds", "max_rss_mb", "cpu_seconds"]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex of a Snakemake file pattern (``{name}`` or ``{name,regex}`` wildcards)."""
    parts, pos = [], 0
    for m in re.finditer(r"\{([^{}]+)\}", pattern):
        parts.append(re.escape(pattern[pos : m.start()]))
        _, _, constraint = m.group(1).partition(",")
        parts.append(f"(?:{constraint.strip()})" if constraint else ".+")
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("".join(parts))


def rule_matcher(patterns: Mapping[str, str] | None):
    """``path -> rule name`` from ``{rule: benchmark pattern}``; the most literal pattern wins."""
    compiled = sorted(
        ((rule, pattern_regex(p), len(re.sub(r"\{[^{}]+\}", "", p))) for rule, p in (patterns or {}).items()),
        key=lambda item: -item[2],
    )

    def match(path: str) -> str | None:
        return next((rule for rule, regex, _ in compiled if regex.fullmatch(path)), None)

    return match


def read_benchmark(path: Path, root: Path, rule: str | None = None) -> dict[str, object] | None:
    """One job's row (mean over repeats); None for an empty or unreadable file (logged).

    Without ``rule`` the rule is named after the file's first folder under ``root`` (or its stem).
    """
    try:
        frame = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        log.warning("skipping benchmark %s: %s", path, e)
        return None
    if frame.empty or "s" not in frame:
        log.warning("skipping benchmark %s: no 's' column or no rows", path)
        return None
    rel = path.relative_to(root)
    numeric = frame.apply(pd.to_numeric, errors="coerce").mean()
    return {
        "rule": rule or (rel.parts[0] if len(rel.parts) > 1 else rel.stem),
        "job": rel.with_suffix("").as_posix(),
        "seconds": float(numeric["s"]),
        "max_rss_mb": float(numeric.get("max_rss", float("nan"))),
        "cpu_seconds": float(numeric.get("cpu_time", float("nan"))),
    }


def collect_runtimes(
    benchmark_dir: str | os.PathLike, patterns: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """One row per job (rule, job, seconds, max_rss_mb, cpu_seconds), sorted by rule and job.

    ``patterns`` maps rule names to their ``benchmark:`` patterns (as written in the rules, relative to
    the working directory like ``benchmark_dir``), so each file is attributed to the rule that wrote it.
    """
    root, match = Path(benchmark_dir), rule_matcher(patterns)
    rows = [r for p in sorted(root.rglob("*.tsv")) if (r := read_benchmark(p, root, match(p.as_posix())))]
    return pd.DataFrame(rows, columns=JOB_COLUMNS).sort_values(["rule", "job"], ignore_index=True)


def per_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    """Jobs, total / mean / max wall seconds and peak memory per rule, slowest total first."""
    if jobs.empty:
        return pd.DataFrame(columns=["jobs", "total_s", "mean_s", "max_s", "max_rss_mb"])
    table = jobs.groupby("rule").agg(
        jobs=("job", "count"), total_s=("seconds", "sum"), mean_s=("seconds", "mean"),
        max_s=("seconds", "max"), max_rss_mb=("max_rss_mb", "max"),
    )  # fmt: skip
    return table.sort_values("total_s", ascending=False)


def plot_runtimes(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Horizontal bars of total wall time per rule (annotated with the job count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.4 * max(len(table), 3) + 1.2), constrained_layout=True)
    if len(table):
        ordered = table.sort_values("total_s")
        ax.barh(ordered.index, ordered["total_s"], color="#4878cf")
        for y, (total, jobs) in enumerate(zip(ordered["total_s"], ordered["jobs"], strict=True)):
            ax.text(
                total, y, f" {total:.1f} s ({jobs} job{'s' if jobs > 1 else ''})", va="center", fontsize=8
            )
        ax.set_xlim(0, ordered["total_s"].max() * 1.35 or 1)
    else:
        ax.text(0.5, 0.5, "no benchmark files", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("total wall time (s)")
    ax.set_title("Runtime per rule")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_runtimes(benchmark_dir: str | os.PathLike, jobs_path: str | os.PathLike, html_path: str | os.PathLike,
                   plot_path: str | os.PathLike, patterns: Mapping[str, str] | None = None) -> pd.DataFrame:  # fmt: skip
    """Write the per-job table (Parquet), the per-rule table (HTML) and the bar chart; return per rule."""
    jobs = collect_runtimes(benchmark_dir, patterns)
    table = per_rule(jobs)
    write_table(jobs_path, jobs, columns=JOB_COLUMNS)
    title = f"<h3>{len(jobs)} jobs, {jobs['seconds'].sum():.1f} s wall time in total</h3>"
    body = title + table.to_html(float_format="%.2f")
    write_text(
        html_path,
        f"<!DOCTYPE html><html><head><meta charset='utf-8'>{STYLE}</head><body>{body}</body></html>\n",
    )
    plot_runtimes(plot_path, table)
    log.info("runtimes of %d jobs in %d rules", len(jobs), len(table))
    return table
