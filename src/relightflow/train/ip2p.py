"""InstructPix2Pix fine-tuning of Stable Diffusion 1.5 or SDXL with accelerate (Brooks et al., 2023).

The UNet sees ``concat(noisy target latents, latents of the degraded input)``: a text-to-image UNet's
``conv_in`` is widened from 4 to 8 input channels, the new weights start at zero so training begins from
the base model's behaviour. Text encoders and VAE are frozen. Conditioning dropout (paper §3.2.1) drops the
text for 2p of the samples, the image for 2p, both for p, which enables classifier-free guidance on each.
The shared loop, checkpoints and outputs are :class:`relightflow.train.trainer.Trainer`'s; the final
pipeline folder loads with ``from_pretrained`` or :func:`relightflow.inference.load`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from relightflow.inference import ModelSettings, pipeline_settings
from relightflow.train.trainer import Trainer, local_or_id

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- model surgery


def widen_conv_in(unet, in_channels: int = 8):
    """Give ``unet.conv_in`` ``in_channels`` inputs; the extra weights are zero (no-op when already wide)."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def add_lora(unet, rank: int, alpha: int | None):
    """Freeze the UNet, add a LoRA on its attention projections; ``conv_in`` stays trainable."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha or rank,
        init_lora_weights="gaussian",
        target_modules=["to_k", "to_q", "to_v", "to_out.0"],
    )
    unet.add_adapter(config)
    unet.conv_in.requires_grad_(True)  # the 4 new input channels must learn
    return unet


def merged_unet(unet):
    """A plain UNet with the LoRA deltas merged into the base weights (loads without peft)."""
    from diffusers import UNet2DConditionModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    state = {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}
    plain = UNet2DConditionModel.from_config(unet.config)
    plain.load_state_dict(state)
    return plain


# ---------------------------------------------------------------- loading


def load_models(cfg) -> dict[str, Any]:
    """Tokenizers, text encoders, VAE, UNet and the DDPM noise scheduler from ``cfg.pretrained``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    src = cfg.pretrained
    models: dict[str, Any] = {
        "noise_scheduler": DDPMScheduler.from_pretrained(src, subfolder="scheduler"),
        "tokenizers": [AutoTokenizer.from_pretrained(src, subfolder="tokenizer")],
        "text_encoders": [CLIPTextModel.from_pretrained(src, subfolder="text_encoder")],
        "unet": UNet2DConditionModel.from_pretrained(src, subfolder="unet"),
    }
    if cfg.vae:
        models["vae"] = AutoencoderKL.from_pretrained(cfg.vae)
    else:
        models["vae"] = AutoencoderKL.from_pretrained(src, subfolder="vae")
    if cfg.model == "sdxl":
        models["tokenizers"].append(AutoTokenizer.from_pretrained(src, subfolder="tokenizer_2"))
        models["text_encoders"].append(
            CLIPTextModelWithProjection.from_pretrained(src, subfolder="text_encoder_2")
        )
    return models


def encode_prompts(prompts: list[str], tokenizers, text_encoders, sdxl: bool) -> tuple[torch.Tensor, Any]:
    """Text hidden states (and, for SDXL, the pooled embedding of the second encoder)."""
    device = text_encoders[0].device
    states, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        if not sdxl:
            return encoder(ids)[0], None
        out = encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = getattr(out, "text_embeds", None)
    return torch.cat(states, dim=-1), pooled


def sdxl_time_ids(batch: dict[str, Any], resolution: int, device, dtype) -> torch.Tensor:
    """SDXL micro-conditioning: (original h, w, crop top, left, target h, w) per sample."""
    rows = [
        [*orig, *crop, resolution, resolution]
        for orig, crop in zip(batch["original_size"], batch["crop_top_left"], strict=True)
    ]
    return torch.tensor(rows, device=device, dtype=dtype)


# ---------------------------------------------------------------- the family


class IP2PTrainer(Trainer):
    """SD1.5 / SDXL InstructPix2Pix: full UNet (with EMA) or a LoRA merged at the end."""

    family = "sd15"
    ignored_keys = frozenset({"guidance_scale", "image_guidance_scale", "flux"})  # inference only

    def __init__(self, cfg, paths):
        super().__init__(cfg, paths)
        self.family = self.cfg.model
        self.sdxl = self.cfg.model == "sdxl"

    def base_models(self) -> list[str | None]:
        return [self.cfg.pretrained, self.cfg.vae]

    def load_models(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        cfg, acc = self.cfg, self.accelerator
        m = load_models(cfg)
        self.noise_scheduler, self.tokenizers = m["noise_scheduler"], m["tokenizers"]
        self.text_encoders, self.vae = m["text_encoders"], m["vae"]
        unet = widen_conv_in(m["unet"])
        unet.set_attn_processor(AttnProcessor2_0())  # torch scaled_dot_product_attention
        for module in (self.vae, *self.text_encoders):
            module.requires_grad_(False).eval()
        dtype = self.weight_dtype
        vae_dtype = torch.float32 if (self.vae.config.force_upcast and not cfg.vae) else dtype
        if vae_dtype == torch.float32:
            self.vae.to(acc.device)  # no dtype argument: diffusers warns on casts to the same dtype
        else:
            self.vae.to(acc.device, dtype=vae_dtype)
        for encoder in self.text_encoders:
            encoder.to(acc.device, dtype=dtype)
        if cfg.lora_rank:
            unet = add_lora(unet, cfg.lora_rank, cfg.lora_alpha)
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if cfg.use_ema and not cfg.lora_rank:
            from diffusers import UNet2DConditionModel
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(
                unet.parameters(),
                decay=cfg.ema_decay,
                model_cls=UNet2DConditionModel,
                model_config=unet.config,
            )
            self.ema.to(acc.device)
        elif cfg.use_ema:
            log.warning("EMA is off with LoRA (only the adapter trains)")
        self.model = unet
        self.null_text = self._null_text()

    def _null_text(self) -> tuple[torch.Tensor, Any]:
        """Text conditioning of a dropped prompt: zeros for SDXL (force_zeros_for_empty_prompt), else ""."""
        with torch.no_grad():
            states, pooled = encode_prompts([""], self.tokenizers, self.text_encoders, self.sdxl)
        if self.sdxl:
            states, pooled = torch.zeros_like(states), torch.zeros_like(pooled)
        return states, pooled

    def _latents(self, batch: dict[str, Any], generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled target latents, input-image latents) from pixels or from the cache."""
        sf = self.vae.config.scaling_factor
        if "target_latent_params" in batch:
            mean, logvar = batch["target_latent_params"].chunk(2, dim=1)
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            return (mean + std * _randn(mean, generator)) * sf, batch["source_latent"]
        dtype = self.vae.dtype
        with torch.no_grad():
            dist = self.vae.encode(batch["target"].to(dtype)).latent_dist
            target = (dist.mean + dist.std * _randn(dist.mean, generator)) * sf
            source = self.vae.encode(batch["source"].to(dtype)).latent_dist.mode()
        return target, source

    def _dropout(self, states, pooled, source, generator):
        """Conditioning dropout (§3.2.1): text for r < 2p, image for p <= r < 3p (both for p <= r < 2p)."""
        p = self.cfg.conditioning_dropout_prob
        if p <= 0:
            return states, pooled, source
        r = torch.rand(states.shape[0], generator=generator, device=generator.device).to(states.device)
        drop_text = (r < 2 * p)[:, None, None]
        null_states, null_pooled = (
            t.to(states.device, states.dtype) if t is not None else None for t in self.null_text
        )
        states = torch.where(drop_text, null_states, states)
        if pooled is not None:
            pooled = torch.where(drop_text[:, :, 0], null_pooled, pooled)
        keep_image = 1 - ((r >= p) & (r < 3 * p)).to(source.dtype)
        return states, pooled, source * keep_image[:, None, None, None]

    def loss(self, batch: dict[str, Any], generator: torch.Generator, train: bool = True) -> torch.Tensor:
        """The denoising loss (MSE on epsilon or v, per the scheduler's prediction type)."""
        sched = self.noise_scheduler
        target_latents, source = (t.float() for t in self._latents(batch, generator))
        noise = _randn(target_latents, generator)
        t = torch.randint(
            0,
            sched.config.num_train_timesteps,
            (target_latents.shape[0],),
            generator=generator,
            device=generator.device,
        ).to(noise.device)
        noisy = sched.add_noise(target_latents, noise, t)
        with torch.no_grad():
            states, pooled = encode_prompts(batch["prompt"], self.tokenizers, self.text_encoders, self.sdxl)
        if train:
            states, pooled, source = self._dropout(states, pooled, source, generator)
        added = None
        if self.sdxl:
            time_ids = sdxl_time_ids(batch, self.cfg.resolution, noise.device, states.dtype)
            added = {"text_embeds": pooled, "time_ids": time_ids}
        pred = self.model(
            torch.cat([noisy, source], dim=1), t, states, added_cond_kwargs=added, return_dict=False
        )[0]
        target = (
            sched.get_velocity(target_latents, noise, t)
            if sched.config.prediction_type == "v_prediction"
            else noise
        )
        return F.mse_loss(pred.float(), target.float())

    def pipeline(self, unet=None):
        import diffusers

        unet = unet or self.accelerator.unwrap_model(self.model)
        parts = dict(
            vae=self.vae, text_encoder=self.text_encoders[0], tokenizer=self.tokenizers[0], unet=unet
        )
        if self.sdxl:
            scheduler = diffusers.EulerDiscreteScheduler.from_config(self.noise_scheduler.config)
            return diffusers.StableDiffusionXLInstructPix2PixPipeline(
                **parts,
                text_encoder_2=self.text_encoders[1],
                tokenizer_2=self.tokenizers[1],
                scheduler=scheduler,
                add_watermarker=False,
                is_cosxl_edit=False,
            )
        scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(self.noise_scheduler.config)
        return diffusers.StableDiffusionInstructPix2PixPipeline(
            **parts,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def save_weights(self, folder: Path, model) -> None:
        """A full pipeline folder in fp32 (LoRA merged into the UNet, so it loads without peft)."""
        unet = merged_unet(model) if self.cfg.lora_rank else model
        for module in (unet, self.vae, *self.text_encoders):
            module.to(torch.float32)
        self.pipeline(unet).save_pretrained(folder)

    def inference_settings(self, pipe) -> ModelSettings:
        cfg = self.cfg
        return pipeline_settings(
            pipe,
            base_model=local_or_id(cfg.pretrained),
            num_inference_steps=cfg.validation_inference_steps,
            guidance_scale=cfg.guidance_scale,
            image_guidance_scale=cfg.image_guidance_scale,
            resolution=cfg.resolution,
            precision="fp32" if cfg.mixed_precision == "no" else "auto",
        )


def _randn(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn from ``generator`` (on its device)."""
    return torch.randn(like.shape, generator=generator, device=generator.device).to(like.device, like.dtype)
