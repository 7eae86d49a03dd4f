"""Accuracy of ``relightflow.captions.measure.measure_lighting`` on rendered scenes and labelled evaldata.

Usage: python benchmarks/eval_measure_lighting.py [--evaldata ../shared/evaldata] [--json out.json]

Prints one line per figure. Sets (see each folder's MANIFEST.md for the labels):
* rendered scenes (``relightflow.testing``): horizontal / vertical direction and colour temperature,
  with and without the subject mask;
* VIDIT: image left/right (24 side-lit frames) and front vs back (frames S vs N) without masks; warm /
  neutral / cool (20 frames) and, per scene, Spearman rho between measured warmth and -K;
* Cube++: natural vs artificial light type (20 labelled tiles) and shadows yes/no vs hardness;
* MLS: warm halogen / red LED called warm, blue+green >= 50 % called cool, and per LED colour the
  Spearman rho between the light's measured chroma and the LED power.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from relightflow.captions.measure import measure_lighting
from relightflow.images import load_rgb
from relightflow.testing import Scene, render_scene

DEFAULT_EVALDATA = Path(
    os.environ.get("RELIGHTFLOW_EVALDATA", Path(__file__).resolve().parents[2] / "shared" / "evaldata")
)


def rendered_scenes(n_seeds: int = 2, size: int = 192) -> pd.DataFrame:
    """Measure every direction x temperature x exposure combination, with and without the mask."""
    rows = []
    combos = [(h, v, c, e) for h in ("left", "front", "right") for v in ("above", "level", "below")
              for c in ("warm", "neutral", "cool") for e in (0.7, 1.0, 1.3)]  # fmt: skip
    for seed in range(n_seeds):
        for i, (h, v, c, e) in enumerate(combos):
            image, mask, truth = render_scene(Scene(h, v, c, exposure=e, size=size, seed=seed * 1000 + i))
            for use_mask in (True, False):
                m = measure_lighting(image, mask if use_mask else None)
                rows.append({"mask": use_mask, **{f"true_{k}": truth[k] for k in ("horizontal", "vertical")},
                             "true_temp": c, "horizontal": m["horizontal"], "vertical": m["vertical"],
                             "temp": m["color_temperature"]})  # fmt: skip
    return pd.DataFrame(rows)


def _measure_files(folder: Path, labels: pd.DataFrame) -> pd.DataFrame:
    """Labels plus the measured attributes, prefixed ``m_``."""
    measured = pd.DataFrame([measure_lighting(load_rgb(folder / f)) for f in labels["file"]]).add_prefix("m_")
    return pd.concat([labels.reset_index(drop=True), measured], axis=1)


def vidit(root: Path) -> dict[str, Any]:
    labels = pd.read_csv(root / "labels.csv")
    df = _measure_files(root, labels)
    side = df[df["image_left_right"].isin(["left", "right"])]
    fb = df[df["direction"].isin(["N", "S"])]
    temps = df[df["series"] == "illuminants"]
    rhos = [spearmanr(g["m_warmth"], -g["color_temp_K"].astype(float))[0] for _, g in temps.groupby("scene")]
    return {
        "vidit_left_right_acc": float((side["m_horizontal"] == side["image_left_right"]).mean()),
        "vidit_left_right_n": len(side),
        # a light behind the scene lights the far ground (top of the frame) more: slope towards "above"
        "vidit_back_vs_front_acc": float(((fb["m_direction_y"] < 0) == (fb["direction"] == "N")).mean()),
        "vidit_temperature_acc": float((temps["m_color_temperature"] == temps["warm_cool"]).mean()),
        "vidit_temperature_n": len(temps),
        "vidit_warmth_spearman_per_scene": [round(float(r), 3) for r in rhos],
    }


def cubepp(root: Path) -> dict[str, Any]:
    labels = pd.read_csv(root / "labels.csv")
    df = _measure_files(root, labels)
    typed = df[df["illumination"].isin(["natural", "artificial"])]
    predicted = np.where(typed["m_light_type"] == "daylight", "natural", "artificial")
    shadows = df[df["shadows"].isin(["yes", "no"])]
    hard = shadows["m_hardness"] != "soft"
    return {
        "cubepp_light_type_acc": float((predicted == typed["illumination"]).mean()),
        "cubepp_light_type_n": len(typed),
        "cubepp_light_type_majority_baseline": float(
            typed["illumination"].value_counts(normalize=True).max()
        ),
        "cubepp_shadows_acc": float((hard == (shadows["shadows"] == "yes")).mean()),
        "cubepp_shadows_n": len(shadows),
    }


def mls(root: Path) -> dict[str, Any]:
    labels = pd.read_csv(root / "labels.csv")
    df = _measure_files(root, labels)
    warm = df[(df["led_colour"].isin(["none", "red"]))]
    cyan = df[df["led_colour"].str.startswith("blue+green") & (df["led_power_percent"] >= 50)]
    leds = df[df["led_colour"] != "none"]
    rhos = {c: round(float(spearmanr(g["m_color_saturation"], g["led_power_percent"])[0]), 3)
            for c, g in leds.groupby("led_colour")}  # fmt: skip
    return {
        "mls_warm_acc": float((warm["m_color_temperature"] == "warm").mean()),
        "mls_warm_n": len(warm),
        "mls_cyan_cool_acc": float((cyan["m_color_temperature"] == "cool").mean()),
        "mls_cyan_n": len(cyan),
        "mls_chroma_vs_power_spearman": rhos,
        "mls_light_colors": dict(zip(df["config"], df["m_light_color"], strict=True)),
    }


def rendered_figures() -> dict[str, Any]:
    df = rendered_scenes()
    out: dict[str, Any] = {}
    for use_mask, g in df.groupby("mask"):
        tag = "mask" if use_mask else "nomask"
        out[f"render_{tag}_horizontal_acc"] = float((g["horizontal"] == g["true_horizontal"]).mean())
        out[f"render_{tag}_vertical_acc"] = float((g["vertical"] == g["true_vertical"]).mean())
        out[f"render_{tag}_temperature_acc"] = float((g["temp"] == g["true_temp"]).mean())
    out["render_n"] = int(len(df) // 2)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaldata", type=Path, default=DEFAULT_EVALDATA)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = rendered_figures()
    sets = {"C_vidit_direction_colortemp": vidit, "C_cubepp_lighting_type": cubepp,
            "C_mls_colored_light_chart": mls}  # fmt: skip
    for name, fn in sets.items():
        if (args.evaldata / name / "labels.csv").exists():
            figures.update(fn(args.evaldata / name))
    for key, value in figures.items():
        print(f"{key}: {value if not isinstance(value, float) else round(value, 3)}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
