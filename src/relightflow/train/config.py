"""Training settings (the ``train:`` section of config.yaml) and the folders a run reads and writes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Every knob of an InstructPix2Pix run; unknown keys (other trainers' settings) are ignored."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: Literal["sd15", "sdxl", "flux-kontext"] = "sd15"
    pretrained: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    vae: str | None = None  # e.g. madebyollin/sdxl-vae-fp16-fix: an SDXL VAE that is safe in fp16
    resolution: int = Field(512, ge=8, multiple_of=8)
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(4, ge=1)
    max_steps: int = Field(15000, ge=1)
    learning_rate: float = 5e-5
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 500
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    use_8bit_adam: bool = False
    conditioning_dropout_prob: float = Field(0.05, ge=0, le=1 / 3)
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16"
    gradient_checkpointing: bool = True
    use_ema: bool = True
    ema_decay: float = 0.9999
    lora_rank: int = Field(0, ge=0)
    lora_alpha: int | None = None
    max_grad_norm: float = 1.0
    random_flip: bool = True
    center_crop: bool = False
    checkpointing_steps: int = Field(1000, ge=1)
    checkpoints_total_limit: int | None = 3
    validation_steps: int = Field(1000, ge=1)
    num_validation_images: int = Field(4, ge=0)
    validation_inference_steps: int = 20
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    dataloader_num_workers: int = 0
    report_to: Literal["tensorboard", "none"] = "tensorboard"
    log_every: int = Field(10, ge=1)
    allow_tf32: bool = True
    seed: int = 42
    gpus: int = Field(1, ge=0)


class TrainPaths(BaseModel):
    """Inputs (exported splits, optional cached latents) and outputs of a run.

    ``work_dir`` holds everything that must survive a killed job: ``checkpoints/``, ``tensorboard/``,
    ``validation/`` grids, ``loss.jsonl``; ``output_dir`` receives the final diffusers pipeline.
    """

    train_data: str
    output_dir: str
    work_dir: str
    val_data: str | None = None
    latents: str | None = None

    @property
    def checkpoints(self) -> Path:
        return Path(self.work_dir) / "checkpoints"

    @property
    def validation(self) -> Path:
        return Path(self.work_dir) / "validation"

    @property
    def loss_log(self) -> Path:
        return Path(self.work_dir) / "loss.jsonl"
