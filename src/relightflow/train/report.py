"""What a run writes besides its weights: loss log, loss curve, summary and model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from relightflow.manifest import atomic_path, write_json, write_text
from relightflow.train.checkpoints import TrainerState


def write_loss_log(path: Path, state: TrainerState) -> None:
    """``loss.jsonl`` (one ``{step, loss}`` per step) rewritten atomically from the run's state."""
    write_text(path, "".join(json.dumps({"step": int(s), "loss": v}) + "\n" for s, v in state.losses))


def append_loss(path: Path, step: int, loss: float, lr: float) -> None:
    """One line per step while training (the live view; rewritten from the checkpoint on resume)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "loss": loss, "lr": lr}) + "\n")


def plot_curve(state: TrainerState, out: Path, title: str) -> Path:
    """Training loss per step (log scale, with a moving average) and the validation losses, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if state.losses:
        steps, losses = np.array(state.losses).T
        ax.plot(steps, losses, lw=0.8, alpha=0.6, marker="." if len(steps) < 50 else None, label="train loss")
        window = min(100, len(losses) // 10)
        if window > 1:
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window} steps")
    if state.val_losses:
        vsteps, vlosses = np.array(state.val_losses).T
        ax.plot(vsteps, vlosses, "o-", lw=1.2, label="validation loss (fixed noise)")
    if state.losses or state.val_losses:
        ax.legend()
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="MSE", title=title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summary(
    state: TrainerState, family: str, cfg: dict[str, Any], paths: dict[str, Any], extra: dict[str, Any]
) -> dict:
    """``summary.json``: steps, first/last training loss (mean of a tenth), validation losses, settings."""
    losses = [v for _, v in state.losses]
    k = max(1, len(losses) // 10)
    return {
        "model": family,
        "steps": state.step,
        "seconds": round(state.seconds, 1),
        "loss_first": _mean(losses[:k]),
        "loss_last": _mean(losses[-k:]),
        "val_loss_initial": state.val_losses[0][1] if state.val_losses else None,
        "val_loss_final": state.val_losses[-1][1] if state.val_losses else None,
        "val_losses": state.val_losses,
        **extra,
        "config": cfg,
        "paths": paths,
    }


def write_summary(path: Path, data: dict[str, Any]) -> None:
    write_json(path, data)


def model_card(settings: dict[str, Any], data: dict[str, Any]) -> str:
    """A Hugging Face model card: what was trained on what, how well, and how to run it."""
    from huggingface_hub import ModelCardData

    family, base = settings["family"], settings.get("base_model")
    meta = ModelCardData(
        base_model=base,
        library_name="diffusers",
        pipeline_tag="image-to-image",
        tags=["relighting", "image-editing", "relightflow", family],
    ).to_yaml()
    what = (
        "a LoRA on the FLUX.1 Kontext transformer (load it over the base pipeline)"
        if family == "flux-kontext"
        else "an InstructPix2Pix pipeline (its UNet takes the noisy latents and the input image's latents)"
    )
    rows = "\n".join(
        f"| {k} | {data.get(k)} |"
        for k in ("steps", "seconds", "loss_first", "loss_last", "val_loss_initial", "val_loss_final")
    )
    return f"""---
{meta}
---

# Relighting model ({family}, base `{base}`)

This folder holds {what}, trained by relightflow on (degraded photo, lighting instruction, original photo)
triplets: the degraded photo is the input image, the instruction the prompt, the original the target.

| metric | value |
|---|---|
{rows}

Run it: `relightflow relight --model <this folder> --input photo.jpg --prompt "soft light from the left"`,
or in Python `relightflow.inference.load("<this folder>")(image, prompt)`. The sampler settings below
(`relightflow_model.json`) are the defaults; flags override them.

```json
{json.dumps(settings, indent=2, default=str)}
```
"""
