"""Training: InstructPix2Pix (SD1.5 / SDXL) with accelerate; Flux Kontext LoRA lives in ``flux_kontext``."""
