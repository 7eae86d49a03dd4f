"""CLIP lighting score with antonym prompt pairs, in the manner of CLIP-IQA (Wang et al., AAAI 2023).

For each pair (positive, negative) the image gets ``P(positive) = softmax(t * [cos+, cos-])[0]``; the
lighting score is the mean over pairs, in [0, 1]. A positive-only mean cosine (the predecessor's score)
spreads over ~0.1 on FFHQ and its threshold is a coin flip; the softmax against an antonym cancels what
the image shares with both prompts (subject, style) and keeps the lighting contrast. The raw cosine of
every prompt is kept per image (``sim_pos_<k>``, ``sim_neg_<k>``), so pairs can be re-weighted later
without re-encoding.

Models load through ``open_clip.create_model_and_transforms(name, pretrained=tag_or_path)``; ``model``
may also be the path of a ``<name>.json`` open_clip model config, registered first (custom and test
architectures load through the same code as a released checkpoint).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from relightflow.devices import pick_device
from relightflow.filter.data import resize_center_crop

log = logging.getLogger(__name__)


def register_model(model: str) -> str:
    """Return the open_clip model name, registering ``model`` first when it is a ``.json`` config file."""
    import open_clip

    path = Path(model)
    if path.suffix == ".json" and path.is_file():
        open_clip.add_model_config(path)
        return path.stem
    return model


def load_clip(model: str, pretrained: str | None, device: str | torch.device = "cpu"):
    """``(model, tokenizer, preprocess_cfg)`` of an open_clip model; ``pretrained`` is a tag or a local file."""
    import open_clip

    name = register_model(model)
    clip, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained or None, device=device)
    clip.eval().requires_grad_(False)
    return clip, open_clip.get_tokenizer(name), dict(clip.visual.preprocess_cfg)


def check_pairs(prompts: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """Validate ``[[positive, negative], ...]``; a YAML flow list splits unquoted prompts at commas."""
    if not prompts:
        raise ValueError("filter.clip.prompts is empty: give [positive, negative] pairs")
    for k, pair in enumerate(prompts):
        if len(pair) != 2 or not all(isinstance(t, str) and t.strip() for t in pair):
            raise ValueError(
                f"filter.clip.prompts[{k}] must be [positive, negative], got {len(pair)} items {list(pair)!r}"
                " (quote prompts that contain commas)"
            )
    return [(str(p), str(n)) for p, n in prompts]


def prompts_version(pairs: Sequence[Sequence[str]]) -> str:
    """Short hash of the prompt pairs, recorded with every score."""
    return hashlib.sha1(json.dumps([list(p) for p in pairs]).encode()).hexdigest()[:10]


def pair_probabilities(sims: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(B, 2P)`` cosines laid out [pos_0, neg_0, pos_1, neg_1, ...] -> ``(B, P)`` P(positive)."""
    logits = temperature * sims.reshape(sims.shape[0], -1, 2)
    return logits.softmax(dim=-1)[..., 0]


def resolve_device(device: str | None = None) -> torch.device:
    return torch.device(pick_device(device))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (auto: bf16 on GPU, none on CPU)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


class ClipScorer:
    """Scores batches of ``SxSx3 uint8`` crops with an open_clip model and antonym prompt pairs."""

    name = "clip"

    def __init__(self, cfg: dict[str, Any]):
        self.pairs = check_pairs(cfg["prompts"])
        self.device = resolve_device(cfg["device"])
        self.dtype = autocast_dtype(cfg["precision"], self.device)
        self.temperature = float(cfg["temperature"])
        self.store_embeddings = bool(cfg["store_embeddings"])
        self.model_name = f"{cfg['model']}:{cfg['pretrained'] or 'random'}"
        self.model, tokenizer, pp = load_clip(cfg["model"], cfg["pretrained"], self.device)
        size = pp["size"]
        self.size = int(size if isinstance(size, int) else size[0])
        self.mean = torch.tensor(pp["mean"], device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(pp["std"], device=self.device).view(1, 3, 1, 1) * 255.0
        self.text = self._encode_text(tokenizer)
        self.version = prompts_version(self.pairs)

    @property
    def decode_side(self) -> int:
        return self.size

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.size, self.size, 3)

    @property
    def prepare(self):
        return functools.partial(resize_center_crop, size=self.size)

    @property
    def columns(self) -> list[str]:
        sims = [f"sim_{kind}_{k}" for k in range(len(self.pairs)) for kind in ("pos", "neg")]
        return [*sims, "prompts_version", *(["embedding"] if self.store_embeddings else [])]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    @torch.inference_mode()
    def _encode_text(self, tokenizer) -> torch.Tensor:
        tokens = tokenizer([text for pair in self.pairs for text in pair]).to(self.device)
        with self._autocast():
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.inference_mode()
    def embed(self, data: np.ndarray | torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings of a ``(B, S, S, 3) uint8`` batch (one forward pass)."""
        if isinstance(data, np.ndarray):
            data = torch.from_numpy(np.require(data, requirements=("C", "W")))
        x = data.to(self.device, non_blocking=True)
        x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std
        with self._autocast():
            return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def score(self, data: np.ndarray | torch.Tensor) -> dict[str, Any]:
        emb = self.embed(data)
        sims = emb @ self.text.T
        probs = pair_probabilities(sims, self.temperature)
        sims_np = sims.cpu().numpy()
        out: dict[str, Any] = {"lighting_score": probs.mean(dim=1).cpu().numpy().astype(np.float64)}
        for j, col in enumerate(self.columns[: sims_np.shape[1]]):
            out[col] = sims_np[:, j]
        out["prompts_version"] = [self.version] * len(data)
        if self.store_embeddings:
            out["embedding"] = list(emb.cpu().numpy().astype(np.float32))
        return out

    def info(self) -> dict[str, Any]:
        return {
            "model": self.model_name, "device": str(self.device), "dtype": str(self.dtype),
            "prompts": [list(p) for p in self.pairs], "prompts_version": self.version,
            "temperature": self.temperature, "image_size": self.size,
        }  # fmt: skip
