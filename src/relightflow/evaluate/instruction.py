"""Instruction following: does a relit image show the lighting the instruction asked for?

The lighting of each output is re-measured exactly as the instruction was made (:class:`Measurement`): the
captions stage's own function (:func:`relightflow.captions.measure.measure_lighting`), the caption's
subject mask, at the size the caption's measurement worked on (the dataset's ``subject_mask`` and
``measure_side`` columns) — and compared with the attributes the instruction states (``light_direction``,
``color_temperature``). Measured without the mask, or at another size, the real target itself disagrees
with its own instruction far more often: the ``target`` row of the evaluation is that ceiling.

With a CLIP model configured, the CLIP direction similarity of InstructPix2Pix is reported too: the cosine
between the image edit ``E(output) - E(input)`` and the text edit ``E(target prompt) - E(source prompt)``;
positive when the edit moves the image towards the instruction's text, negative when away from it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from relightflow.captions.measure import measure_lighting
from relightflow.images import resize_longer_side

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


@dataclass(frozen=True)
class Measurement:
    """How one instruction's lighting was measured: the caption's subject mask (None: the whole frame) and
    the longer side of the image it measured (None: as given); ``version`` is the caption's measure version.

    Calling it measures any image of the triplet (an output, the input, the target) that same way: scaled
    to ``side``, with the mask as stored (``measure_lighting`` fits it to the image, as in captions).
    """

    mask: np.ndarray | None = None
    side: int | None = None
    version: str | None = None

    def __call__(self, image: np.ndarray) -> dict[str, Any]:
        return measure_lighting(resize_longer_side(image, self.side), self.mask)


def instruction_following(
    image: np.ndarray, light_direction: Any, color_temperature: Any, measurement: Measurement | None = None
) -> dict[str, Any]:
    """Measured attributes of ``image`` and their agreement with the instruction's attributes."""
    measured = (measurement or Measurement())(image)
    return {
        "measured_horizontal": measured["horizontal"],
        "measured_vertical": measured["vertical"],
        "measured_color_temperature": measured["color_temperature"],
        "measured_with_mask": bool(measured["mask_used"]),
        "direction_ok": direction_agrees(measured, light_direction),
        "temperature_ok": temperature_agrees(measured, color_temperature),
    }


class ClipDirection:
    """CLIP direction similarity (and output-target image similarity) of any CLIP-like model.

    ``model`` has ``encode_image(batch)`` and ``encode_text(tokens)``; ``preprocess`` turns a PIL image
    into the model's input tensor and ``tokenizer`` a list of texts into its token tensor (open_clip's
    three objects: :meth:`from_open_clip`).
    """

    def __init__(self, model, preprocess: Callable, tokenizer: Callable, source_prompt: str,
                 target_template: str, device: str = "cpu") -> None:  # fmt: skip
        import torch

        self.model, self.preprocess, self.tokenizer = model.eval(), preprocess, tokenizer
        self.device, self.torch = device, torch
        self.source_prompt, self.target_template = source_prompt, target_template
        self._source = self._text([source_prompt])[0]

    @classmethod
    def from_open_clip(cls, model: str, pretrained: str | None, source_prompt: str, target_template: str,
                       device: str = "cpu") -> ClipDirection:  # fmt: skip
        """``model``: an open_clip architecture name or a model-config JSON; ``pretrained``: an open_clip tag
        or a local checkpoint path (loaded as the filter loads its CLIP: :func:`relightflow.filter.clip.load_clip`)."""
        import open_clip

        from relightflow.filter.clip import load_clip as load_open_clip

        net, tokenizer, _ = load_open_clip(model, pretrained, device)
        preprocess = open_clip.image_transform(net.visual.image_size, is_train=False,
                                               mean=net.visual.image_mean, std=net.visual.image_std)  # fmt: skip
        return cls(net, preprocess, tokenizer, source_prompt, target_template, device)

    def _images(self, images: Sequence[np.ndarray]):
        from PIL import Image

        batch = self.torch.stack([self.preprocess(Image.fromarray(im)) for im in images]).to(self.device)
        with self.torch.no_grad():
            return self.torch.nn.functional.normalize(self.model.encode_image(batch).float(), dim=-1)

    def _text(self, texts: list[str]):
        with self.torch.no_grad():
            emb = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
            return self.torch.nn.functional.normalize(emb, dim=-1)

    def score(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray], targets: Sequence[np.ndarray],
              instructions: Sequence[str]) -> list[dict[str, float]]:  # fmt: skip
        """Per image: ``clip_direction`` (cosine of the image edit and the text edit: > 0 when the output moved
        towards the instruction's text, 0 for no edit) and ``clip_image`` (output vs target cosine)."""
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
    """``(scorer, None)`` when ``evaluate.clip.model`` is set, else ``(None, reason)``; ``cfg`` is the
    validated ``evaluate.clip`` section (defaults filled by the schema)."""
    if not cfg or not cfg["model"]:
        return None, "no CLIP model configured (evaluate.clip.model)"
    scorer = ClipDirection.from_open_clip(
        cfg["model"], cfg["pretrained"], cfg["source_prompt"], cfg["target_template"], device
    )
    log.info("CLIP direction similarity with %s", json.dumps({k: cfg[k] for k in ("model", "pretrained")}))
    return scorer, None
