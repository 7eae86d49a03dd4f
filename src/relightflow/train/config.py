"""Training settings (the ``train:`` section of config.yaml) and the folders a run reads and writes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Keys that never change the weights a step produces: a checkpoint stays resumable when they change.
CADENCE_KEYS = frozenset(
    {
        "max_steps",
        "log_every",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "validation_steps",
        "num_validation_images",
        "validation_inference_steps",
        "validation_loss_samples",
        "report_to",
        "dataloader_num_workers",
        "allow_tf32",
    }
)


class FluxOptions(BaseModel):
    """``train.flux``: read only when ``model: flux-kontext``; the first four replace the top-level keys."""

    model_config = ConfigDict(extra="forbid")

    guidance_scale: float = 2.5  # guidance embedding in training; default at inference
    validation_inference_steps: int = Field(28, ge=1)
    lora_alpha: float | None = None
    dataloader_num_workers: int = Field(2, ge=0)
    precompute_text_embeddings: bool = True
    fp8_base_weights: bool = False
    max_sequence_length: int = Field(128, ge=1, le=512)
    lora_target_modules: list[str] | None = None
    weighting_scheme: Literal["none", "logit_normal", "mode", "sigma_sqrt", "cosmap"] = "none"


class TrainConfig(BaseModel):
    """Every knob of a run; unknown keys (resources such as ``threads``) are ignored."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: Literal["sd15", "sdxl", "flux-kontext"] = "sd15"
    pretrained: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    vae: str | None = None  # e.g. madebyollin/sdxl-vae-fp16-fix: an SDXL VAE that is safe in fp16
    resolution: int = Field(512, ge=8, multiple_of=8)
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(4, ge=1)
    max_steps: int = Field(15000, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = Field(500, ge=0)
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
    lora_alpha: float | None = None
    max_grad_norm: float = 1.0
    random_flip: bool = False
    center_crop: bool = False
    checkpointing_steps: int = Field(1000, ge=1)
    checkpoints_total_limit: int | None = 3
    validation_steps: int = Field(1000, ge=1)
    num_validation_images: int = Field(4, ge=0)
    validation_loss_samples: int = Field(32, ge=0)
    validation_inference_steps: int = 20
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    dataloader_num_workers: int = 0
    report_to: Literal["tensorboard", "none"] = "tensorboard"
    log_every: int = Field(10, ge=1)
    allow_tf32: bool = True
    seed: int = 42
    gpus: int = Field(1, ge=0)
    flux: FluxOptions = FluxOptions()

    def effective(self) -> TrainConfig:
        """The settings the family trains with: for Flux Kontext, ``flux.*`` replaces the shared keys it
        names and a LoRA rank of 0 means 16 (Flux trains a LoRA only)."""
        if self.model != "flux-kontext":
            return self
        f = self.flux
        return self.model_copy(
            update={
                "guidance_scale": f.guidance_scale,
                "validation_inference_steps": f.validation_inference_steps,
                "lora_alpha": f.lora_alpha,
                "dataloader_num_workers": f.dataloader_num_workers,
                "lora_rank": self.lora_rank or 16,
            }
        )


class TrainPaths(BaseModel):
    """Inputs (exported splits, optional cached latents) and outputs of a run.

    ``work_dir`` holds everything that must survive a killed job: ``checkpoints/``, ``tensorboard/``,
    ``validation/`` grids, ``loss.jsonl``, ``summary.json``, ``loss_curve.png``; ``output_dir`` receives
    the final model folder.
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

    @property
    def summary(self) -> Path:
        return Path(self.work_dir) / "summary.json"

    @property
    def loss_curve(self) -> Path:
        return Path(self.work_dir) / "loss_curve.png"
