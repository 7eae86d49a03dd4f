"""Selection figures: the score histogram with the cut marked, and a contact sheet of examples.

PNGs are written without a timestamp or version tag and only when their bytes change.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from relightflow.images import ImageError, load_rgb  # noqa: E402
from relightflow.manifest import write_bytes  # noqa: E402


def _save(fig, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buf.getvalue(), only_if_changed=True)


def score_histogram(
    path: str | os.PathLike,
    selected: Sequence[float],
    unselected: Sequence[float],
    cut: float | None,
    bins: int = 50,
) -> None:
    """Stacked histogram of selected / left-out lighting scores; the cut (lowest selected score) dashed."""
    kept, out = np.asarray(selected, dtype=float), np.asarray(unselected, dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(kept) + len(out):
        edges = np.histogram_bin_edges(np.concatenate([kept, out]), bins=bins)
        ax.hist(
            [kept, out],
            bins=edges,
            stacked=True,
            color=["#4C72B0", "#BBBBBB"],
            label=["selected", "left out"],
        )
    if cut is not None:
        ax.axvline(cut, color="#C44E52", linestyle="--", label=f"cut {cut:.3f}")
    if len(kept) + len(out):
        ax.legend(loc="upper left")
    total = len(kept) + len(out)
    ax.set(
        xlabel="lighting score", ylabel="images", title=f"Lighting scores: {len(kept)} of {total} selected"
    )
    fig.tight_layout()
    _save(fig, path)


def _thumb(path: str, size: int) -> np.ndarray:
    try:
        img = load_rgb(path, max_side=size)
    except (ImageError, OSError):
        return np.full((size, size, 3), 127, dtype=np.uint8)
    tile = np.full((size, size, 3), 255, dtype=np.uint8)
    h, w = img.shape[:2]
    tile[(size - h) // 2 : (size - h) // 2 + h, (size - w) // 2 : (size - w) // 2 + w] = img
    return tile


def example_groups(
    selected: pd.DataFrame, unselected: pd.DataFrame, per_group: int
) -> dict[str, pd.DataFrame]:
    """Best selected, borderline (around the cut) and worst-scored unselected (or selected) images."""
    below = unselected[unselected.get("reason", pd.Series(dtype=str)) == "below the selection cut"]
    half = per_group // 2
    borderline = pd.concat([selected.tail(per_group - half if len(below) else per_group), below.head(half)])
    worst = unselected if len(unselected) else selected
    return {
        "best": selected.head(per_group),
        "borderline": borderline,
        "rejected": worst.sort_values("lighting_score", kind="mergesort").head(per_group),
    }


def contact_sheet(
    path: str | os.PathLike,
    selected: pd.DataFrame,
    unselected: pd.DataFrame,
    per_group: int = 8,
    size: int = 128,
) -> None:
    """Rows of best / borderline / rejected examples, each tile captioned with its score."""
    groups = example_groups(selected, unselected, per_group)
    fig, axes = plt.subplots(
        len(groups), per_group, figsize=(per_group * 1.6, len(groups) * 1.9), squeeze=False
    )
    for row, (name, frame) in enumerate(groups.items()):
        records = frame.to_dict("records")
        for col in range(per_group):
            ax = axes[row, col]
            ax.set_axis_off()
            if col < len(records):
                rec = records[col]
                ax.imshow(_thumb(rec["path"], size))
                tag = rec.get("split") if isinstance(rec.get("split"), str) else "out"
                ax.set_title(f"{rec['lighting_score']:.3f} {tag}", fontsize=7)
        axes[row, 0].text(
            -0.1, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, va="center", ha="right"
        )
    fig.tight_layout()
    _save(fig, path)
