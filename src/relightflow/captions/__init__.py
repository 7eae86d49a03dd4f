"""Captions stage: lighting instructions for each selected original image.

``measure.measure_lighting`` measures lighting attributes from pixels; ``providers`` ask a VLM (vLLM,
an OpenAI-compatible endpoint, local transformers) for a structured description (``schema``);
``render`` turns attributes into the instruction text; ``cache`` stores answers by content; ``run``
drives one shard.
"""

from relightflow.captions.measure import measure_lighting

__all__ = ["measure_lighting"]
