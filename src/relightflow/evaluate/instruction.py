"""Instruction following: does a relit image show the lighting the instruction asked for?

The lighting of each output is re-measured with the captions stage's own measurement code
(:func:`relightflow.captions.measure.measure_lighting`) and compared with the instruction's attributes
(``light_direction``, ``color_temperature`` columns of the dataset). With a CLIP model configured, the
CLIP direction similarity of InstructPix2Pix is reported too: the cosine between the image edit
``E(output) - E(input)`` and the text edit ``E(target prompt) - E(source prompt)``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from relightflow.captions.measure import measure_lighting

log = logging.getLogger(__name__)

_HORIZONTAL = {"left": "left", "right": "right"}
_VERTICAL = {"above": "above", "top": "above", "upper": "above", "overhead": "above", "below": "below",
             "bottom": "below", "under": "below", "lower": "below"}  # fmt: skip
_FRONT = {"front", "frontal", "camera", "flat", "even"}
_BACK = {"back", "behind", "rim", "backlit", "backlight"}
TEMPERATURES = ("warm", "neutral", "cool")


def parse_direction(text: Any) -> dict[str, str]:
    """The asked-for direction as ``{horizontal?, vertical?, front?/back?}`` from free text ('upper left')."""
    if not isinstance(text, str) or not text.strip():
        return {}
    words = set(re.findall(r"[a-z]+", text.lower()))
    asked: dict[str, str] = {}
    for word in words:
        if word in _HORIZONTAL:
            asked["horizontal"] = _HORIZONTAL[word]
        elif word in _VERTICAL:
            asked["vertical"] = _VERTICAL[word]
    if not asked and words & _BACK:
        asked["back"] = "back"
    elif not asked and words & _FRONT:
        asked["horizontal"] = "front"
    return asked


def direction_agrees(measured: dict[str, Any], light_direction: Any) -> bool | None:
    """True when every axis the instruction names matches the measurement; None when it names none."""
    asked = parse_direction(light_direction)
    if not asked:
        return None
    if "back" in asked:
        return bool(measured.get("backlit"))
    return all(measured.get(axis) == value for axis, value in asked.items())


def temperature_agrees(measured: dict[str, Any], color_temperature: Any) -> bool | None:
    """True when the measured colour temperature equals the asked one; None when none is asked."""
    asked = str(color_temperature).strip().lower() if isinstance(color_temperature, str) else ""
    if asked not in TEMPERATURES:
        return None
    return measured.get("color_temperature") == asked


def instruction_following(image: np.ndarray, light_direction: Any, color_temperature: Any) -> dict[str, Any]:
    """Measured attributes of ``image`` and their agreement with the instruction's attributes."""
    measured = measure_lighting(image)
    return {
        "measured_horizontal": measured["horizontal"],
        "measured_vertical": measured["vertical"],
        "measured_color_temperature": measured["color_temperature"],
        "direction_ok": direction_agrees(measured, light_direction),
        "temperature_ok": temperature_agrees(measured, color_temperature),
    }


class ClipDirection:
    """CLIP direction similarity (and output-target image similarity) with an open_clip model.

    ``model`` is an open_clip architecture name or the path of a model-config JSON (registered under
    its file stem); ``pretrained`` an open_clip tag or a local checkpoint path.
    """

    def __init__(self, model: str, pretrained: str | None, source_prompt: str, target_template: str,
                 device: str = "cpu") -> None:  # fmt: skip
        import open_clip
        import torch

        name = model
        if model.endswith(".json"):
            open_clip.add_model_config(Path(model))
            name = Path(model).stem
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained or None, device=device
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.device, self.torch = device, torch
        self.source_prompt, self.target_template = source_prompt, target_template
        self._source = self._text([source_prompt])[0]

    def _images(self, images: list[np.ndarray]):
        from PIL import Image

        batch = self.torch.stack([self.preprocess(Image.fromarray(im)) for im in images]).to(self.device)
        with self.torch.no_grad():
            return self.torch.nn.functional.normalize(self.model.encode_image(batch).float(), dim=-1)

    def _text(self, texts: list[str]):
        with self.torch.no_grad():
            emb = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
            return self.torch.nn.functional.normalize(emb, dim=-1)

    def score(self, inputs: list[np.ndarray], outputs: list[np.ndarray], targets: list[np.ndarray],
              instructions: list[str]) -> list[dict[str, float]]:  # fmt: skip
        """Per image: ``clip_direction`` (edit follows the text) and ``clip_image`` (output vs target)."""
        f = self.torch.nn.functional
        e_in, e_out, e_tgt = self._images(inputs), self._images(outputs), self._images(targets)
        texts = [self.target_template.format(instruction=i) for i in instructions]
        text_edit = self._text(texts) - self._source[None]
        direction = f.cosine_similarity(e_out - e_in, text_edit, dim=-1)
        image_sim = (e_out * e_tgt).sum(-1)
        return [
            {"clip_direction": float(d), "clip_image": float(s)}
            for d, s in zip(direction.tolist(), image_sim.tolist(), strict=True)
        ]


def load_clip(cfg: dict[str, Any] | None, device: str = "cpu") -> tuple[ClipDirection | None, str | None]:
    """``(scorer, None)`` when ``evaluate.clip.model`` is set, else ``(None, reason)``."""
    cfg = cfg or {}
    if not cfg.get("model"):
        return None, "no CLIP model configured (evaluate.clip.model)"
    scorer = ClipDirection(
        cfg["model"],
        cfg.get("pretrained"),
        cfg.get("source_prompt", "a photo"),
        cfg.get("target_template", "a photo, {instruction}"),
        device,
    )
    log.info(
        "CLIP direction similarity with %s", json.dumps({k: cfg.get(k) for k in ("model", "pretrained")})
    )
    return scorer, None
