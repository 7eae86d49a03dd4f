"""FLUX.1 Kontext LoRA: the Flux family of the trainer (model loading, loss, LoRA targets, LoRA saving).

Training follows the Kontext pipeline's own conditioning: the degraded image is VAE-encoded and packed as
context tokens (position ids with first axis 1) after the noisy target tokens; the instruction is the
prompt (T5 sequence + CLIP pooled); the loss is rectified flow matching, ``x_s = (1 - s) x0 + s noise``,
target ``noise - x0``, on the target tokens only. Only peft LoRA layers on the transformer's attention
projections train; VAE, text encoders and base weights stay frozen in ``mixed_precision`` dtype.

Memory: with ``flux.precompute_text_embeddings`` the T5/CLIP encoders run once over the distinct prompts
(mirrored ones too when flipping), their outputs go to memory-mapped files in ``work_dir/text_embeddings``,
and the encoders leave the GPU before the transformer is loaded. Checkpoints hold the LoRA, never the
frozen base. The model folder holds ``pytorch_lora_weights.safetensors`` (``FluxKontextPipeline.
load_lora_weights`` loads it) and ``relightflow_model.json`` naming the base pipeline; the shared loop,
data, checkpoints and outputs are :class:`relightflow.train.trainer.Trainer`'s.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relightflow.inference import LORA_WEIGHTS, ModelSettings, pipeline_settings
from relightflow.manifest import read_json, write_json
from relightflow.train.trainer import Trainer, local_or_id

log = logging.getLogger(__name__)

ATTENTION_MODULES = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
LOGIT_MEAN, LOGIT_STD, MODE_SCALE = 0.0, 1.0, 1.29  # noise-level densities of logit_normal / mode


# ---------------------------------------------------------------- text embeddings

_INT_VIEW = {"float32": torch.int32, "bfloat16": torch.int16, "float16": torch.int16}


def _to_bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().view(_INT_VIEW[str(t.dtype).split(".")[1]]).numpy()


def _from_bits(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).view(dtype)


def encode_prompts(text_pipe, prompts: Sequence[str], max_sequence_length: int, device) -> tuple:
    """(T5 sequence embeddings, CLIP pooled embeddings) of ``prompts`` with the pipeline's own encoder."""
    with torch.no_grad():
        embeds, pooled, _ = text_pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, device=device, max_sequence_length=max_sequence_length
        )
    return embeds, pooled


class PromptCache:
    """Text embeddings of every distinct prompt in two memory-mapped ``.npy`` files (exact dtype bits)."""

    def __init__(self, folder: str | os.PathLike, dtype: torch.dtype):
        meta = read_json(Path(folder) / "index.json")
        self.index = {p: i for i, p in enumerate(meta["prompts"])}
        self.dtype = dtype
        self.embeds = np.load(Path(folder) / "embeds.npy", mmap_mode="r")
        self.pooled = np.load(Path(folder) / "pooled.npy", mmap_mode="r")

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.index[p] for p in prompts]
        return _from_bits(self.embeds[rows], self.dtype), _from_bits(self.pooled[rows], self.dtype)

    @staticmethod
    def key(pretrained: str, prompts: Sequence[str], max_sequence_length: int, dtype: torch.dtype) -> str:
        h = hashlib.sha256(f"{pretrained}|{max_sequence_length}|{dtype}".encode())
        for p in prompts:
            h.update(p.encode("utf-8") + b"\0")
        return h.hexdigest()

    @classmethod
    def build(
        cls,
        folder: str | os.PathLike,
        text_pipe,
        prompts: Sequence[str],
        pretrained: str,
        max_sequence_length: int,
        device,
        dtype,
    ) -> None:
        """Encode ``prompts`` in batches into ``folder`` unless a cache with the same key is there."""
        folder = Path(folder)
        key = cls.key(pretrained, prompts, max_sequence_length, dtype)
        if (folder / "index.json").exists() and read_json(folder / "index.json").get("key") == key:
            log.info("text embeddings: reusing %s (%d prompts)", folder, len(prompts))
            return
        folder.mkdir(parents=True, exist_ok=True)
        t0, maps, tmp = time.perf_counter(), {}, {}
        for start in range(0, len(prompts), 16):
            chunk = encode_prompts(text_pipe, prompts[start : start + 16], max_sequence_length, device)
            for name, t in zip(("embeds", "pooled"), chunk, strict=True):
                bits = _to_bits(t.to(dtype))
                if name not in maps:
                    tmp[name] = folder / f".{name}.tmp.npy"
                    maps[name] = np.lib.format.open_memmap(
                        tmp[name], mode="w+", dtype=bits.dtype, shape=(len(prompts), *bits.shape[1:])
                    )
                maps[name][start : start + len(bits)] = bits
        for name, m in maps.items():
            m.flush()
            os.replace(tmp[name], folder / f"{name}.npy")
        write_json(folder / "index.json", {"key": key, "prompts": list(prompts)})
        log.info(
            "text embeddings: %d prompts in %.1f s -> %s", len(prompts), time.perf_counter() - t0, folder
        )


def load_text_pipeline(pretrained: str, dtype: torch.dtype, device):
    """The Kontext pipeline with only its tokenizers and text encoders loaded."""
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(pretrained, transformer=None, vae=None, dtype=dtype)
    return pipe.to(device)


# ---------------------------------------------------------------- model, latents, loss


def load_denoiser(pretrained: str, dtype: torch.dtype, device):
    """(transformer, vae, scheduler) of a Kontext checkpoint (local folder or hub id), frozen."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(pretrained, subfolder="transformer", dtype=dtype)
    vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae", dtype=dtype)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(pretrained, subfolder="scheduler")
    for m in (transformer, vae):
        m.requires_grad_(False).to(device)
    vae.eval()
    return transformer, vae, scheduler


def encode_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised VAE latents (the distribution mode, as the Kontext pipeline encodes its context image)."""
    latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


def pack(latents: torch.Tensor) -> torch.Tensor:
    from diffusers import FluxKontextPipeline

    b, c, h, w = latents.shape
    return FluxKontextPipeline._pack_latents(latents, b, c, h, w)


def position_ids(latents: torch.Tensor, context: bool) -> torch.Tensor:
    """Rotary position ids of packed latents; context tokens get 1 on the first axis."""
    from diffusers import FluxKontextPipeline

    _, _, h, w = latents.shape
    ids = FluxKontextPipeline._prepare_latent_image_ids(1, h // 2, w // 2, latents.device, latents.dtype)
    if context:
        ids[..., 0] = 1
    return ids


def predict_velocity(transformer, noisy, context, sigmas, embeds, pooled, guidance_scale: float):
    """Transformer prediction on the target tokens, with the context tokens appended to the sequence."""
    target_tokens = pack(noisy)
    hidden = torch.cat([target_tokens, pack(context)], dim=1)
    img_ids = torch.cat([position_ids(noisy, False), position_ids(context, True)], dim=0)
    guidance = None
    if getattr(transformer, "module", transformer).config.guidance_embeds:  # DDP-wrapped or not
        guidance = torch.full((noisy.shape[0],), guidance_scale, device=noisy.device, dtype=torch.float32)
    txt_ids = torch.zeros(embeds.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
    out = transformer(
        hidden_states=hidden,
        timestep=sigmas.to(noisy.dtype),  # the pipeline passes t / 1000 = sigma
        guidance=guidance,
        pooled_projections=pooled,
        encoder_hidden_states=embeds,
        txt_ids=txt_ids,
        img_ids=img_ids,
        return_dict=False,
    )[0]
    return out[:, : target_tokens.shape[1]]


def flow_matching_loss(
    transformer, x0, context, embeds, pooled, sigmas, noise, guidance_scale, weighting=None
):
    """Per-sample rectified-flow loss ``|v(x_s) - (noise - x0)|^2`` averaged over the target tokens."""
    s = sigmas.view(-1, 1, 1, 1).to(x0.dtype)
    noisy = (1.0 - s) * x0 + s * noise
    pred = predict_velocity(transformer, noisy, context, sigmas, embeds, pooled, guidance_scale)
    err = (pred.float() - pack(noise - x0).float()) ** 2
    per_sample = err.flatten(1).mean(1)
    return per_sample * weighting if weighting is not None else per_sample


def sample_sigmas(scheme: str, train_sigmas: torch.Tensor, n: int, generator) -> torch.Tensor:
    """Noise levels for a batch, drawn with the configured density (uniform, logit-normal, mode)."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(
        scheme, n, LOGIT_MEAN, LOGIT_STD, MODE_SCALE, generator.device, generator
    )
    idx = (u * len(train_sigmas)).long().clamp(0, len(train_sigmas) - 1)
    return train_sigmas.to(u.device)[idx]


# ---------------------------------------------------------------- LoRA weights


def save_lora(folder: Path, transformer) -> None:
    """``FluxKontextPipeline.save_lora_weights`` (with the adapter config as metadata)."""
    from diffusers import FluxKontextPipeline
    from peft.utils import get_peft_model_state_dict

    FluxKontextPipeline.save_lora_weights(
        folder,
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
        weight_name=LORA_WEIGHTS,
    )


def load_lora_into(transformer, folder: Path) -> None:
    """Load saved LoRA weights back into the training adapter ``default``."""
    from diffusers import FluxKontextPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    sd = FluxKontextPipeline.lora_state_dict(folder, weight_name=LORA_WEIGHTS)
    sd = {k.removeprefix("transformer."): v for k, v in sd.items() if k.startswith("transformer.")}
    result = set_peft_model_state_dict(
        transformer, convert_unet_state_dict_to_peft(sd), adapter_name="default"
    )
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"LoRA checkpoint has unexpected keys: {result.unexpected_keys[:5]}")


def register_lora_hooks(accelerator) -> None:
    """Make ``save_state``/``load_state`` store the LoRA only, never the frozen base weights."""
    from diffusers.training_utils import cast_training_params

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                save_lora(Path(output_dir), accelerator.unwrap_model(model))
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        while models:
            model = models.pop()
            load_lora_into(accelerator.unwrap_model(model), Path(input_dir))
            cast_training_params([model], dtype=torch.float32)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# ---------------------------------------------------------------- the family


class FluxKontextTrainer(Trainer):
    """A LoRA on the Kontext transformer's attention projections (``flux.lora_target_modules``)."""

    family = "flux-kontext"
    ignored_keys = frozenset(
        {"image_guidance_scale", "conditioning_dropout_prob", "use_ema", "ema_decay", "vae"}
    )

    def load_models(self) -> None:
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        cfg, acc, dtype = self.cfg, self.accelerator, self.weight_dtype
        self.text_pipe, self.cache = None, None
        prompts = sorted(set(self.train_set.prompts()) | set(self.val_set.prompts() if self.val_set else []))
        if cfg.flux.precompute_text_embeddings:
            self._precompute(prompts, dtype)
        else:
            self.text_pipe = load_text_pipeline(cfg.pretrained, dtype, acc.device)
        self.transformer, self.vae, self.scheduler = load_denoiser(cfg.pretrained, dtype, acc.device)
        self.train_sigmas = self.scheduler.sigmas.clone()
        multiple = 2 ** len(self.vae.config.block_out_channels)  # VAE factor x 2x2 packing
        if cfg.resolution % multiple:
            raise ValueError(f"train.resolution {cfg.resolution} must be a multiple of {multiple}")
        if cfg.flux.fp8_base_weights:  # before the adapter, so LoRA weights are never stored in float8
            self.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
        self.transformer.add_adapter(
            LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                init_lora_weights="gaussian",
                target_modules=list(cfg.flux.lora_target_modules or ATTENTION_MODULES),
            )
        )  # fmt: skip  (gaussian A, zero B: training starts from the base model's behaviour)
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        cast_training_params([self.transformer], dtype=torch.float32)  # trainable LoRA weights in fp32
        register_lora_hooks(acc)
        self.model = self.transformer

    def _precompute(self, prompts: list[str], dtype: torch.dtype) -> None:
        from diffusers.training_utils import free_memory

        acc, cfg, folder = self.accelerator, self.cfg, Path(self.paths.work_dir) / "text_embeddings"
        if acc.is_main_process:
            key = PromptCache.key(cfg.pretrained, prompts, cfg.flux.max_sequence_length, dtype)
            index = folder / "index.json"
            if not (index.exists() and read_json(index).get("key") == key):
                text_pipe = load_text_pipeline(cfg.pretrained, dtype, acc.device)
                PromptCache.build(
                    folder,
                    text_pipe,
                    prompts,
                    cfg.pretrained,
                    cfg.flux.max_sequence_length,
                    acc.device,
                    dtype,
                )
                del text_pipe
                free_memory()
        acc.wait_for_everyone()
        self.cache = PromptCache(folder, dtype)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 embeddings, CLIP pooled) of ``prompts`` on the device: cached or encoded live."""
        if self.cache is not None:
            embeds, pooled = self.cache(prompts)
        else:
            embeds, pooled = encode_prompts(
                self.text_pipe, prompts, self.cfg.flux.max_sequence_length, self.accelerator.device
            )
        device, dtype = self.accelerator.device, self.weight_dtype
        return embeds.to(device, dtype), pooled.to(device, dtype)

    def loss(self, batch: dict[str, Any], generator: torch.Generator, train: bool = True) -> torch.Tensor:
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        scheme = self.cfg.flux.weighting_scheme
        with torch.no_grad():
            x0 = encode_latents(self.vae, batch["target"]).to(self.weight_dtype)
            context = encode_latents(self.vae, batch["source"]).to(self.weight_dtype)
            embeds, pooled = self.encode(batch["prompt"])
        noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device, x0.dtype)
        sigmas = sample_sigmas(scheme, self.train_sigmas, x0.shape[0], generator).to(x0.device)
        weighting = compute_loss_weighting_for_sd3(scheme, sigmas)
        return flow_matching_loss(
            self.model, x0, context, embeds, pooled, sigmas, noise, self.cfg.guidance_scale, weighting
        ).mean()

    def pipeline(self):
        """A Kontext pipeline around the training modules (text encoders only when kept live)."""
        import copy

        from diffusers import FluxKontextPipeline

        text = {
            k: getattr(self.text_pipe, k, None)
            for k in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
        }
        return FluxKontextPipeline(
            scheduler=copy.deepcopy(self.scheduler),
            vae=self.vae,
            transformer=self.accelerator.unwrap_model(self.model),
            **text,
        )

    def prompt_kwargs(self) -> Callable[[str], dict[str, Any]] | None:
        if self.cache is None:
            return None

        def cached(prompt: str) -> dict[str, Any]:
            embeds, pooled = self.encode([prompt])
            return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

        return cached

    def save_weights(self, folder: Path, model) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_lora(folder, model)

    def inference_settings(self, pipe) -> ModelSettings:
        cfg = self.cfg
        return pipeline_settings(
            pipe,
            base_model=local_or_id(cfg.pretrained),
            lora_weights=LORA_WEIGHTS,
            num_inference_steps=cfg.validation_inference_steps,
            guidance_scale=cfg.guidance_scale,
            resolution=cfg.resolution,
            precision="fp32" if cfg.mixed_precision == "no" else "auto",
            max_sequence_length=cfg.flux.max_sequence_length,
            lora_rank=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha or cfg.lora_rank,
            lora_target_modules=list(cfg.flux.lora_target_modules or ATTENTION_MODULES),
        )
