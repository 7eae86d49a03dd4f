"""The one place that picks a torch device and the dtype of a ``precision`` setting.

``precision`` is a config value: ``auto`` (bf16 on CUDA, fp32 elsewhere), ``fp32``, ``fp16`` or ``bf16``;
the ``mixed_precision`` spellings of accelerate (``no``, ``fp16``, ``bf16``) are accepted too.
"""

from __future__ import annotations

from typing import Any

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "no")


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(precision: str | None, device: str | Any = "cpu"):
    """The torch dtype of ``precision`` on ``device`` (``auto``/None: bf16 on CUDA, fp32 elsewhere)."""
    import torch

    if precision in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {"fp32": torch.float32, "no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    return table[precision]
