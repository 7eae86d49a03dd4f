"""How often an instruction states a WRONG light direction or colour temperature, before and after the
decision rules of ``relightflow.captions.render`` (confident measurement wins, unsure direction left out).

Usage: python benchmarks/eval_caption_decisions.py [--evaldata ../shared/evaldata] [--flip 0.25] [--seeds 5]

Labelled images: rendered scenes (``relightflow.testing``; side, height and temperature known; measured with
their subject mask, as the caption stage does when segments exist) and the VIDIT frames of the evaldata
(image left/right/centre and front/back; warm/neutral/cool; no mask). The VLM is simulated from the truth:
it names the wrong side with probability ``--flip`` (published audits of VLM-written edit instructions find
left/right confusion among their most common errors) and a wrong temperature with probability ``--temp-err``.

Policies: ``before`` = the previous rules (complement: the VLM's direction unless a confident measurement
disagrees; the measured provider always states its direction); ``after`` = :func:`render.decide` /
:func:`render.measured_fields`. Figures: share of instructions stating a direction, share stating a wrong
one (any named axis contradicts the truth), share stating a wrong temperature.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relightflow.captions.measure import measure_lighting
from relightflow.captions.render import (
    MIN_CONFIDENCE,
    decide,
    direction_agrees,
    direction_axes,
    measured_direction_noun,
    measured_fields,
)
from relightflow.images import load_rgb
from relightflow.testing import Scene, render_scene

DEFAULT_EVALDATA = Path(__file__).resolve().parents[2] / "shared" / "evaldata"
_VLM_NOUN = {"left": "left", "right": "right", "above": "top", "below": "bottom", "front": "front", "back": "back"}
_OTHER = {"warm": ("neutral", "cool"), "neutral": ("warm", "cool"), "cool": ("warm", "neutral")}


def labelled(evaldata: Path) -> list[dict[str, Any]]:
    """Measured attributes and truth (h: left/right/None, v: above/below/None/"?", back, temp or "?")."""
    items = []
    for seed in range(2):
        for i, (h, v, c, e) in enumerate((h, v, c, e) for h in ("left", "front", "right")
                                         for v in ("above", "level", "below") for c in ("warm", "neutral", "cool")
                                         for e in (0.7, 1.0, 1.3)):  # fmt: skip
            image, mask, _ = render_scene(Scene(h, v, c, exposure=e, size=160, seed=seed * 1000 + i))
            items.append({"set": "rendered", "measured": measure_lighting(image, mask),
                          "h": None if h == "front" else h, "v": None if v == "level" else v, "back": False, "temp": c})  # fmt: skip
    root = evaldata / "C_vidit_direction_colortemp"
    if (root / "labels.csv").exists():
        for row in pd.read_csv(root / "labels.csv").to_dict("records"):
            measured = measure_lighting(load_rgb(root / row["file"]))
            if row["series"] == "directions":
                side = row["image_left_right"]
                items.append({"set": "vidit", "measured": measured, "h": side if side in ("left", "right") else None,
                              "v": "?", "back": str(row["front_back"]).startswith("back"), "temp": "?"})  # fmt: skip
            else:
                items.append({"set": "vidit", "measured": measured, "h": "?", "v": "?", "back": "?",
                              "temp": row["warm_cool"]})  # fmt: skip
    return items


def simulated_vlm(item: dict[str, Any], rng: np.random.Generator, flip: float, temp_err: float) -> dict[str, str]:
    """The truth, with the wrong side at rate ``flip`` and a wrong temperature at rate ``temp_err``."""
    if item["h"] in ("left", "right"):
        direction = item["h"] if rng.random() >= flip else {"left": "right", "right": "left"}[item["h"]]
    elif item["back"] is True:
        direction = "back"
    elif item["v"] in ("above", "below"):
        direction = item["v"]
    else:
        direction = "front" if rng.random() >= flip else str(rng.choice(["left", "right"]))
    temp = item["temp"] if item["temp"] != "?" else str(rng.choice(["warm", "neutral", "cool"]))
    if rng.random() < temp_err:
        temp = str(rng.choice(_OTHER[temp]))
    return {"direction": direction, "color_temperature": temp}


def before_vlm(vlm: dict[str, str], m: dict[str, Any]) -> tuple[str, str]:
    """The previous complement rule: the VLM's, replaced by the measurement where it is confident and disagrees."""
    direction = _VLM_NOUN[vlm["direction"]]
    if not direction_agrees(vlm["direction"], m) and m["direction_confidence"] >= MIN_CONFIDENCE:
        direction = measured_direction_noun(m)
    temp = vlm["color_temperature"]
    if temp != m["color_temperature"] and m["color_confidence"] >= MIN_CONFIDENCE:
        temp = m["color_temperature"]
    return direction, temp


def wrong_direction(noun: str, item: dict[str, Any]) -> bool:
    """Whether a stated direction names an axis the truth contradicts ("?" = unknown, not scored)."""
    axes = direction_axes(noun)
    wrong = "h" in axes and item["h"] != "?" and axes["h"] != item["h"]
    wrong |= "v" in axes and item["v"] != "?" and axes["v"] != item["v"]
    wrong |= "b" in axes and item["back"] is False
    wrong |= "f" in axes and item["h"] in ("left", "right")
    return bool(wrong)


def score(items: list[dict[str, Any]], flip: float, temp_err: float, seeds: int) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        for item in items:
            m, vlm = item["measured"], simulated_vlm(item, rng, flip, temp_err)
            after = decide(vlm, m, "complement")
            policies = {
                ("vlm", "before"): before_vlm(vlm, m), ("vlm", "after"): (after.direction, after.temperature),
                ("measured", "before"): (measured_direction_noun(m), m["color_temperature"]),
                ("measured", "after"): (measured_fields(m)["direction"], m["color_temperature"]),
            }  # fmt: skip
            for (provider, policy), (noun, temp) in policies.items():
                noun = "" if noun == "front" and provider == "measured" and policy == "after" else noun
                rows.append({"set": item["set"], "provider": provider, "policy": policy, "stated": bool(noun),
                             "wrong_direction": wrong_direction(noun, item),
                             "wrong_temp": item["temp"] != "?" and temp != item["temp"], "temp_known": item["temp"] != "?",
                             "direction_known": item["h"] != "?"})  # fmt: skip
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (provider, policy), g in df.groupby(["provider", "policy"], sort=False):
        d, t = g[g["direction_known"]], g[g["temp_known"]]
        out.append({"provider": provider, "policy": policy, "n": len(d),
                    "direction stated %": 100 * d["stated"].mean(),
                    "wrong direction %": 100 * d["wrong_direction"].mean(),
                    "wrong among stated %": 100 * d.loc[d["stated"], "wrong_direction"].mean(),
                    "wrong temperature %": 100 * t["wrong_temp"].mean()})  # fmt: skip
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaldata", type=Path, default=DEFAULT_EVALDATA)
    parser.add_argument("--flip", type=float, default=0.25, help="simulated VLM: wrong-side rate")
    parser.add_argument("--temp-err", type=float, default=0.15, help="simulated VLM: wrong-temperature rate")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    items = labelled(args.evaldata)
    df = score(items, args.flip, args.temp_err, args.seeds)
    print(f"{len(items)} labelled images; simulated VLM: wrong side {args.flip:.0%}, wrong temperature "
          f"{args.temp_err:.0%}; {args.seeds} seeds")  # fmt: skip
    for name, part in [("all", df), *df.groupby("set")]:
        print(f"\n[{name}]")
        print(summary(part).to_string(index=False, float_format=lambda x: f"{x:.1f}"))


if __name__ == "__main__":
    main()
