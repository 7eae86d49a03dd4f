"""Local transformers VLM (``AutoModelForImageTextToText`` + ``AutoProcessor``, Qwen3-VL class), one GPU.

Loads a hub id or a local folder with the same code (tests load a tiny random Qwen3-VL saved to disk).
Batches are left-padded; only the newly generated tokens are decoded and validated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from relightflow.captions.providers.base import CaptionResult, Counters, generate_validated
from relightflow.captions.schema import SYSTEM_PROMPT, USER_PROMPT
from relightflow.devices import pick_device, torch_dtype


def hf_messages(image: np.ndarray) -> list[dict[str, Any]]:
    """Chat messages in the transformers processor format (image as a PIL object)."""
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": [
            {"type": "image", "image": Image.fromarray(np.asarray(image, dtype=np.uint8))},
            {"type": "text", "text": USER_PROMPT},
        ]},
    ]  # fmt: skip


class TransformersCaptioner:
    """Generate lighting descriptions with a local image-text-to-text model."""

    name = "transformers"
    endpoint = ""

    def __init__(self, cfg: dict[str, Any], device: str | None = None):
        self.cfg = cfg
        self.model = cfg["model"]
        self.max_new_tokens = int(cfg["max_new_tokens"])
        self.temperature = float(cfg["temperature"])
        self.max_retries = int(cfg["max_retries"])
        self.seed = int(cfg["seed"])
        self.device = device
        self.processor: Any = None
        self.net: Any = None  # loaded on the first cache miss: a fully cached shard never loads the model
        self.counters = Counters()

    def load(self) -> None:
        """Load processor and model (hub id or local folder) onto the GPU if there is one."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = pick_device(self.device)
        dtype = torch_dtype("auto", self.device)
        self.processor = AutoProcessor.from_pretrained(self.model)
        self.processor.tokenizer.padding_side = "left"
        self.net = AutoModelForImageTextToText.from_pretrained(self.model, dtype=dtype).to(self.device).eval()

    def params(self) -> dict[str, Any]:
        params = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature}
        return {**params, "seed": self.seed} if self.temperature > 0 else params  # greedy ignores the seed

    def generate_texts(self, images: Sequence[np.ndarray]) -> list[str]:
        """One reply per image (a single batched ``generate``)."""
        import torch

        if self.net is None:
            self.load()
        inputs = self.processor.apply_chat_template(
            [hf_messages(im) for im in images], tokenize=True, add_generation_prompt=True,
            return_dict=True, return_tensors="pt", padding=True,
        ).to(self.device)  # fmt: skip
        sampling = (
            {"do_sample": True, "temperature": self.temperature}
            if self.temperature > 0
            else {"do_sample": False}
        )
        if self.temperature > 0:
            torch.manual_seed(self.seed)
        with torch.inference_mode():
            out = self.net.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)

    def describe(self, images: Sequence[np.ndarray]) -> list[CaptionResult]:
        retries = self.max_retries if self.temperature > 0 else 0  # greedy decoding would repeat itself
        return generate_validated(
            lambda idx: self.generate_texts([images[i] for i in idx]), len(images), retries, self.counters
        )

    def close(self) -> None:
        self.net = None
