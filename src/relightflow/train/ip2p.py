"""InstructPix2Pix fine-tuning of Stable Diffusion 1.5 or SDXL with accelerate (Brooks et al., 2023).

The UNet sees ``concat(noisy target latents, latents of the degraded input)``: a text-to-image UNet's
``conv_in`` is widened from 4 to 8 input channels, the new weights start at zero so training begins from
the base model's behaviour. Text encoders and VAE are frozen. Conditioning dropout (paper §3.2.1) drops the
text for 2p of the samples, the image for 2p, both for p, which enables classifier-free guidance on each.
Checkpoints (``accelerator.save_state``, written to a temporary folder then renamed) let a killed run
resume from the latest one; the final pipeline folder loads with ``from_pretrained``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from relightflow.train.config import TrainConfig, TrainPaths

log = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


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
        r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
        target_modules=["to_k", "to_q", "to_v", "to_out.0"],
    )  # fmt: skip
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


def load_models(cfg: TrainConfig) -> dict[str, Any]:
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


# ---------------------------------------------------------------- checkpoints


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``checkpoint-N`` in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()
    ]
    return sorted(found)


def save_checkpoint(accelerator, folder: Path, step: int, total_limit: int | None) -> Path:
    """``save_state`` into a temporary folder, rename it ``checkpoint-<step>``, prune the oldest."""
    final, tmp = folder / f"checkpoint-{step}", folder / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in checkpoints(folder)[: -total_limit or None] if total_limit else []:
            shutil.rmtree(old, ignore_errors=True)
        log.info("saved %s", final)
    accelerator.wait_for_everyone()
    return final


def truncate_loss_log(path: Path, step: int) -> None:
    """Drop loss records after ``step`` (a resumed run rewrites them)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


# ---------------------------------------------------------------- the loop


class Trainer:
    """One InstructPix2Pix run: ``Trainer(cfg, paths).train()`` returns the saved pipeline folder."""

    def __init__(self, cfg: TrainConfig, paths: TrainPaths):
        self.cfg, self.paths = cfg, paths
        self.sdxl = cfg.model == "sdxl"

    # -- setup
    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        cfg = self.cfg
        cpu = not torch.cuda.is_available()
        precision = "no" if cpu and cfg.mixed_precision == "fp16" else cfg.mixed_precision
        project = ProjectConfiguration(
            project_dir=self.paths.work_dir, logging_dir=f"{self.paths.work_dir}/tensorboard"
        )
        return Accelerator(
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=precision,
            log_with=None if cfg.report_to == "none" else cfg.report_to,
            project_config=project,
            cpu=cpu,
        )

    def _weight_dtype(self) -> torch.dtype:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            self.accelerator.mixed_precision, torch.float32
        )

    def _prepare_models(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        cfg, acc = self.cfg, self.accelerator
        m = load_models(cfg)
        self.noise_scheduler, self.tokenizers = m["noise_scheduler"], m["tokenizers"]
        self.text_encoders, self.vae = m["text_encoders"], m["vae"]
        unet = widen_conv_in(m["unet"])
        unet.set_attn_processor(AttnProcessor2_0())  # torch scaled_dot_product_attention
        for module in (self.vae, *self.text_encoders):
            module.requires_grad_(False).eval()
        dtype = self._weight_dtype()
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
        self.ema = None
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
        self.unet = unet
        self.null_text = self._null_text()

    def _null_text(self) -> tuple[torch.Tensor, Any]:
        """Text conditioning of a dropped prompt: zeros for SDXL (force_zeros_for_empty_prompt), else ""."""
        with torch.no_grad():
            states, pooled = encode_prompts([""], self.tokenizers, self.text_encoders, self.sdxl)
        if self.sdxl:
            states, pooled = torch.zeros_like(states), torch.zeros_like(pooled)
        return states, pooled

    def _optimizer(self):
        cfg = self.cfg
        params = [p for p in self.unet.parameters() if p.requires_grad]
        if cfg.use_8bit_adam:
            try:
                import bitsandbytes as bnb
            except ImportError as e:
                raise ImportError("use_8bit_adam needs bitsandbytes (pip install bitsandbytes)") from e
            cls = bnb.optim.AdamW8bit
        else:
            cls = torch.optim.AdamW
        return cls(
            params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon,
        )  # fmt: skip

    def _dataloader(self):
        from relightflow.train import data

        cfg, paths = self.cfg, self.paths
        if paths.latents:
            ds = data.latent_dataset(paths.latents)
        else:
            ds = data.train_dataset(
                paths.train_data, cfg.resolution, cfg.center_crop, cfg.random_flip, cfg.seed
            )
        generator = torch.Generator().manual_seed(cfg.seed)
        return torch.utils.data.DataLoader(
            ds, batch_size=cfg.batch_size, shuffle=True, collate_fn=data.collate,
            num_workers=cfg.dataloader_num_workers, generator=generator, drop_last=len(ds) >= cfg.batch_size,
        )  # fmt: skip

    def setup(self) -> None:
        from accelerate.utils import set_seed
        from diffusers.optimization import get_scheduler

        cfg = self.cfg
        self.accelerator = acc = self._accelerator()
        set_seed(cfg.seed)
        if cfg.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        self._prepare_models()
        optimizer = self._optimizer()
        loader = self._dataloader()
        lr_scheduler = get_scheduler(
            cfg.lr_scheduler, optimizer=optimizer,
            num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
            num_training_steps=cfg.max_steps * acc.num_processes,
        )  # fmt: skip
        self.unet, self.optimizer, self.loader, self.lr_scheduler = acc.prepare(
            self.unet, optimizer, loader, lr_scheduler
        )
        if self.ema is not None:
            acc.register_for_checkpointing(self.ema)
        if acc.is_main_process and cfg.report_to != "none":
            acc.init_trackers(
                "relightflow", config={k: v for k, v in cfg.model_dump().items() if v is not None}
            )

    def resume(self) -> int:
        """Load the latest checkpoint (if any); return the step it was saved at."""
        found = checkpoints(self.paths.checkpoints)
        if not found:
            if self.accelerator.is_main_process:
                truncate_loss_log(self.paths.loss_log, 0)  # a fresh run: forget an older run's losses
            return 0
        step, path = found[-1]
        self.accelerator.load_state(str(path))
        if self.accelerator.is_main_process:
            truncate_loss_log(self.paths.loss_log, step)
        log.info("resumed from %s (step %d)", path, step)
        return step

    # -- one step
    def _latents(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled target latents, input-image latents) from pixels or from the cache."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        sf = self.vae.config.scaling_factor
        if "target_latent_params" in batch:
            target = DiagonalGaussianDistribution(batch["target_latent_params"]).sample()
            return target * sf, batch["input_latent"]
        dtype = self.vae.dtype
        with torch.no_grad():
            target = self.vae.encode(batch["edited_pixel_values"].to(dtype)).latent_dist.sample() * sf
            source = self.vae.encode(batch["original_pixel_values"].to(dtype)).latent_dist.mode()
        return target, source

    def _dropout(self, states, pooled, source):
        """Conditioning dropout (§3.2.1): text for r < 2p, image for p <= r < 3p (both for p <= r < 2p)."""
        p = self.cfg.conditioning_dropout_prob
        if p <= 0:
            return states, pooled, source
        r = torch.rand(states.shape[0], device=states.device)
        drop_text = (r < 2 * p)[:, None, None]
        null_states, null_pooled = (
            t.to(states.device, states.dtype) if t is not None else None for t in self.null_text
        )
        states = torch.where(drop_text, null_states, states)
        if pooled is not None:
            pooled = torch.where(drop_text[:, :, 0], null_pooled, pooled)
        keep_image = 1 - ((r >= p) & (r < 3 * p)).to(source.dtype)
        return states, pooled, source * keep_image[:, None, None, None]

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The denoising loss of one batch (MSE on epsilon or v, per the scheduler's prediction type)."""
        sched, unet = self.noise_scheduler, self.unet
        target_latents, source = self._latents(batch)
        target_latents, source = target_latents.float(), source.float()
        noise = torch.randn_like(target_latents)
        t = torch.randint(
            0, sched.config.num_train_timesteps, (target_latents.shape[0],), device=noise.device
        )
        noisy = sched.add_noise(target_latents, noise, t)
        with torch.no_grad():
            states, pooled = encode_prompts(
                batch["edit_prompt"], self.tokenizers, self.text_encoders, self.sdxl
            )
        states, pooled, source = self._dropout(states, pooled, source)
        added = None
        if self.sdxl:
            time_ids = sdxl_time_ids(batch, self.cfg.resolution, noise.device, states.dtype)
            added = {"text_embeds": pooled, "time_ids": time_ids}
        pred = unet(torch.cat([noisy, source], dim=1), t, states, added_cond_kwargs=added, return_dict=False)[
            0
        ]
        if sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(target_latents, noise, t)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float())

    # -- main loop
    def train(self) -> Path:
        if not hasattr(self, "accelerator"):
            self.setup()
        cfg, acc = self.cfg, self.accelerator
        step = self.resume()
        batches_per_epoch = max(1, len(self.loader) // cfg.gradient_accumulation_steps)
        skip = (step % batches_per_epoch) * cfg.gradient_accumulation_steps
        log.info(
            "training %s from step %d to %d on %d process(es)",
            cfg.model,
            step,
            cfg.max_steps,
            acc.num_processes,
        )
        running = 0.0
        while step < cfg.max_steps:
            loader = acc.skip_first_batches(self.loader, skip) if skip else self.loader
            skip = 0
            for batch in loader:
                with acc.accumulate(self.unet):
                    loss = self.loss(batch)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.unet.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                running += acc.gather(loss.detach()[None]).mean().item() / cfg.gradient_accumulation_steps
                if not acc.sync_gradients:
                    continue
                if self.ema is not None:
                    self.ema.step(self.unet.parameters())
                step += 1
                self._log_step(step, running)
                running = 0.0
                self._periodic(step)
                if step >= cfg.max_steps:
                    break
        return self.finish(step)

    def _log_step(self, step: int, loss: float) -> None:
        lr = self.lr_scheduler.get_last_lr()[0]
        self.accelerator.log({"train/loss": loss, "train/lr": lr}, step=step)
        if self.accelerator.is_main_process:
            self.paths.loss_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.paths.loss_log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "loss": loss, "lr": lr}) + "\n")
            if step % self.cfg.log_every == 0 or step == 1:
                log.info("step %d loss %.4f lr %.2e", step, loss, lr)

    def _periodic(self, step: int) -> None:
        cfg = self.cfg
        if step % cfg.checkpointing_steps == 0 or step == cfg.max_steps:
            save_checkpoint(self.accelerator, self.paths.checkpoints, step, cfg.checkpoints_total_limit)
        if cfg.num_validation_images and (step % cfg.validation_steps == 0 or step == cfg.max_steps):
            self.validate(step)

    # -- pipeline, validation, final save
    def pipeline(self, unet=None):
        """An inference pipeline around the current modules (EMA weights must already be in ``unet``)."""
        import diffusers

        unet = unet or self.accelerator.unwrap_model(self.unet)
        parts = dict(
            vae=self.vae, text_encoder=self.text_encoders[0], tokenizer=self.tokenizers[0], unet=unet
        )
        if self.sdxl:
            scheduler = diffusers.EulerDiscreteScheduler.from_config(self.noise_scheduler.config)
            return diffusers.StableDiffusionXLInstructPix2PixPipeline(
                **parts, text_encoder_2=self.text_encoders[1], tokenizer_2=self.tokenizers[1],
                scheduler=scheduler, add_watermarker=False, is_cosxl_edit=False,
            )  # fmt: skip
        scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(self.noise_scheduler.config)
        return diffusers.StableDiffusionInstructPix2PixPipeline(
            **parts,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def _ema_weights(self):
        """Context manager: the UNet temporarily holds the EMA weights."""
        if self.ema is None:
            return nullcontext()
        ema, params = self.ema, list(self.accelerator.unwrap_model(self.unet).parameters())

        class _Swap:
            def __enter__(self):
                ema.store(params)
                ema.copy_to(params)

            def __exit__(self, *exc):
                ema.restore(params)

        return _Swap()

    def validate(self, step: int) -> Path | None:
        """Relight a few val triplets; save the grid (input | prediction | target) and the loss curve."""
        from relightflow.train import report

        acc, cfg = self.accelerator, self.cfg
        if not acc.is_main_process:
            acc.wait_for_everyone()
            return None
        rows = report.validation_rows(self.paths.val_data or self.paths.train_data, cfg.num_validation_images)
        grid_path = None
        if rows:
            with self._ema_weights(), torch.no_grad(), acc.autocast():
                pipe = self.pipeline()
                pipe.set_progress_bar_config(disable=True)
                grid, mse = report.validation_grid(pipe, rows, cfg, acc.device)
            grid_path = report.save_grid(self.paths.validation / f"step-{step:07d}.png", grid)
            acc.log({"val/mse": mse}, step=step)
            self._log_image(grid, step)
            log.info("step %d validation mse %.4f -> %s", step, mse, grid_path)
        report.plot_loss(self.paths.loss_log, Path(self.paths.work_dir) / "loss_curve.png")
        acc.wait_for_everyone()
        return grid_path

    def _log_image(self, grid, step: int) -> None:
        if self.cfg.report_to == "tensorboard":
            self.accelerator.get_tracker("tensorboard").log_images(
                {"validation": grid[None]}, step, dataformats="NHWC"
            )

    def finish(self, step: int) -> Path:
        """Save the trained pipeline (EMA weights, LoRA merged) to ``output_dir``; write the summary."""
        from relightflow.dataset import replace_dir
        from relightflow.train import report

        acc, out = self.accelerator, Path(self.paths.output_dir)
        acc.wait_for_everyone()
        if acc.is_main_process:
            unet = acc.unwrap_model(self.unet)
            if self.ema is not None:
                self.ema.copy_to(unet.parameters())
            if self.cfg.lora_rank:
                unet = merged_unet(unet)
            for module in (unet, self.vae, *self.text_encoders):
                module.to(torch.float32)
            tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            self.pipeline(unet).save_pretrained(tmp)
            replace_dir(tmp, out)
            report.plot_loss(self.paths.loss_log, Path(self.paths.work_dir) / "loss_curve.png")
            report.write_summary(Path(self.paths.work_dir) / "summary.json", self.cfg, self.paths, step)
            log.info("saved the pipeline to %s", out)
        acc.end_training()
        return out


def train(cfg: TrainConfig, paths: TrainPaths) -> Path:
    """Run (or resume) an InstructPix2Pix training; return the pipeline folder."""
    if cfg.max_steps <= 0 or math.isnan(cfg.learning_rate):
        raise ValueError("max_steps must be positive and learning_rate a number")
    return Trainer(cfg, paths).train()
