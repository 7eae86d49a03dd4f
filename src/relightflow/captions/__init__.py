"""Captions stage: lighting instructions for each selected original image.

``measure.measure_lighting`` measures lighting attributes from pixels; ``providers`` ask a VLM (vLLM,
an OpenAI-compatible endpoint, local transformers) for a structured description (``schema``);
``render`` turns attributes into the instruction text; ``cache`` stores answers by content; ``run``
drives one shard.
"""

from __future__ import annotations

from typing import Any

__all__ = ["measure_lighting"]


def __getattr__(name: str) -> Any:
    """``measure_lighting`` on first use: the workflow imports this package when parsed, without OpenCV."""
    if name == "measure_lighting":
        from relightflow.captions.measure import measure_lighting

        return measure_lighting
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
