"""A tiny random open_clip model (config JSON + checkpoint), loaded through ``filter.clip.load_clip`` like a
real one: for tests of the CLIP filter backend and the CLIP evaluation metrics."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def save_tiny_clip(
    folder: str | Path, name: str = "tiny-clip", seed: int = 0, image_size: int = 64, patch_size: int = 16
) -> tuple[str, str]:
    """Write a tiny random open_clip model: ``(config json path, checkpoint path)`` for ``load_clip``."""
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        **TINY_CONFIG,
        "vision_cfg": {**TINY_CONFIG["vision_cfg"], "image_size": image_size, "patch_size": patch_size},
    }
    config = folder / f"{name}.json"
    config.write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg)
    checkpoint = folder / f"{name}.pt"
    torch.save(model.state_dict(), checkpoint)
    return str(config), str(checkpoint)
