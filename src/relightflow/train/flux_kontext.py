"""FLUX.1 Kontext LoRA: train on relighting triplets, save diffusers LoRA weights, relight with them.

Training follows the Kontext pipeline's own conditioning: the degraded image is VAE-encoded and packed as
context tokens (position ids with first axis 1) after the noisy target tokens; the instruction is the
prompt (T5 sequence + CLIP pooled); the loss is rectified flow matching, ``x_s = (1 - s) x0 + s noise``,
target ``noise - x0``, on the target tokens only. Only peft LoRA layers on the transformer's attention
projections train; VAE, text encoders and base weights stay frozen in ``mixed_precision`` dtype.

Memory: with ``flux.precompute_text_embeddings`` the T5/CLIP encoders run once over the distinct prompts,
their outputs go to memory-mapped files under the checkpoints folder, and the encoders leave the GPU
before the transformer is loaded. Images are centre-cropped, never flipped (a flip would swap the
"light from the left/right" of the instruction).

Outputs in ``output_dir``: ``pytorch_lora_weights.safetensors`` (``FluxKontextPipeline.load_lora_weights``
loads it), ``relightflow_model.json`` (kind, base model, inference settings), ``README.md`` (model card),
``training_metrics.json`` and ``validation/step-*.png`` grids (input | output | target per row).
Checkpoints (LoRA + optimizer + scheduler + RNG) go to ``checkpoints_dir`` and a rerun resumes from the
latest one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from relightflow.images import save_image
from relightflow.manifest import read_json, write_json, write_text

if TYPE_CHECKING:
    import datasets
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

KIND = "flux-kontext-lora"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
MODEL_INFO = "relightflow_model.json"
TRAINER_STATE = "trainer_state.json"
DEFAULT_LORA_RANK = 16
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
COLUMNS = ("input_image", "edit_prompt", "edited_image")


class FluxKontextSettings(BaseModel):
    """The ``train:`` config section as this trainer reads it (``train.flux.*`` override top-level keys)."""

    model_config = ConfigDict(extra="ignore")

    pretrained: str
    resolution: int = Field(512, ge=16)
    batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_steps: int = Field(1000, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    checkpointing_steps: int = Field(500, ge=1)
    checkpoints_total_limit: int | None = 3
    validation_steps: int = Field(500, ge=1)
    num_validation_images: int = Field(4, ge=0)
    lora_rank: int = DEFAULT_LORA_RANK
    max_grad_norm: float = 1.0
    use_8bit_adam: bool = False
    seed: int = 42
    # flux-specific (train.flux.*)
    precompute_text_embeddings: bool = True
    fp8_base_weights: bool = (
        False  # store frozen transformer weights in float8 (upcast per layer): 24 GB cards
    )
    guidance_scale: float = 2.5
    max_sequence_length: int = Field(128, ge=1, le=512)
    lora_alpha: float | None = None
    lora_target_modules: list[str] | None = None
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    validation_inference_steps: int = Field(28, ge=1)
    validation_loss_samples: int = Field(32, ge=1)
    dataloader_num_workers: int = Field(2, ge=0)

    @field_validator("lora_rank")
    @classmethod
    def _default_rank(cls, v: int) -> int:
        return v if v and v > 0 else DEFAULT_LORA_RANK

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> FluxKontextSettings:
        flat = {k: v for k, v in cfg.items() if k != "flux"}
        flat.update(cfg.get("flux") or {})
        return cls(**flat)

    @property
    def alpha(self) -> float:
        return self.lora_alpha or float(self.lora_rank)

    @property
    def target_modules(self) -> list[str]:
        return list(self.lora_target_modules or ATTENTION_MODULES)


# ---------------------------------------------------------------- data


def load_triplets(dataset_dir: str | os.PathLike) -> datasets.Dataset:
    """The exported HF parquet split (memory-mapped Arrow; images decode lazily to PIL)."""
    import datasets

    files = sorted(str(p) for p in Path(dataset_dir).rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet files under {dataset_dir}")
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(f"{dataset_dir}: missing columns {missing}")
    for col in ("input_image", "edited_image"):
        if not isinstance(ds.features[col], datasets.Image):
            ds = ds.cast_column(col, datasets.Image())
    return ds.select_columns(list(COLUMNS))


def pair_transform(
    resolution: int,
) -> Callable[[Image.Image, Image.Image], tuple[torch.Tensor, torch.Tensor]]:
    """Resize the shorter side, centre-crop both images alike, scale to [-1, 1] (no flips)."""
    from torchvision import transforms as T

    tf = T.Compose(
        [
            T.Resize(resolution, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(resolution),
            T.ToTensor(),
            T.Normalize([0.5], [0.5]),
        ]
    )

    def apply(context: Image.Image, target: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        context, target = context.convert("RGB"), target.convert("RGB")
        if context.size != target.size:
            context = context.resize(target.size)
        return tf(context), tf(target)

    return apply


class TripletDataset:
    """Map-style torch dataset: (context pixels, target pixels, prompt) per row."""

    def __init__(self, ds: datasets.Dataset, resolution: int):
        self.ds = ds
        self.transform = pair_transform(resolution)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.ds[int(i)]
        context, target = self.transform(row["input_image"], row["edited_image"])
        return {"context": context, "target": target, "prompt": row["edit_prompt"] or ""}


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {
        "context": torch.stack([r["context"] for r in rows]),
        "target": torch.stack([r["target"] for r in rows]),
        "prompt": [r["prompt"] for r in rows],
    }


def distinct_prompts(*splits: datasets.Dataset | None) -> list[str]:
    """Sorted distinct instructions of the given splits (streams the text column only)."""
    seen: set[str] = set()
    for ds in splits:
        if ds is None:
            continue
        for batch in ds.select_columns(["edit_prompt"]).iter(batch_size=4096):
            seen.update(p or "" for p in batch["edit_prompt"])
    return sorted(seen)


# ---------------------------------------------------------------- text embeddings

_INT_VIEW = {"float32": "int32", "bfloat16": "int16", "float16": "int16"}


def _to_bits(t: torch.Tensor) -> np.ndarray:
    import torch

    return t.detach().cpu().contiguous().view(getattr(torch, _INT_VIEW[str(t.dtype).split(".")[1]])).numpy()


def _from_bits(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).view(dtype)


def encode_prompts(text_pipe, prompts: Sequence[str], max_sequence_length: int, device) -> tuple:
    """(T5 sequence embeddings, CLIP pooled embeddings) of ``prompts`` with the pipeline's own encoder."""
    import torch

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
        s: FluxKontextSettings,
        device,
        dtype,
    ) -> None:
        """Encode ``prompts`` in batches into ``folder`` unless a cache with the same key is there."""
        folder = Path(folder)
        key = cls.key(s.pretrained, prompts, s.max_sequence_length, dtype)
        if (folder / "index.json").exists() and read_json(folder / "index.json").get("key") == key:
            log.info("text embeddings: reusing %s (%d prompts)", folder, len(prompts))
            return
        folder.mkdir(parents=True, exist_ok=True)
        first = encode_prompts(text_pipe, prompts[:1], s.max_sequence_length, device)
        arrays = {}
        for name, t in zip(("embeds", "pooled"), first, strict=True):
            bits = _to_bits(t.to(dtype))
            arrays[name] = (folder / f".{name}.tmp.npy", (len(prompts), *bits.shape[1:]), bits.dtype)
        maps = {
            n: np.lib.format.open_memmap(p, mode="w+", dtype=d, shape=sh) for n, (p, sh, d) in arrays.items()
        }
        t0 = time.perf_counter()
        for start in range(0, len(prompts), 16):
            embeds, pooled = encode_prompts(
                text_pipe, prompts[start : start + 16], s.max_sequence_length, device
            )
            maps["embeds"][start : start + len(embeds)] = _to_bits(embeds.to(dtype))
            maps["pooled"][start : start + len(pooled)] = _to_bits(pooled.to(dtype))
        for name, m in maps.items():
            m.flush()
            os.replace(arrays[name][0], folder / f"{name}.npy")
        write_json(folder / "index.json", {"key": key, "prompts": list(prompts)})
        log.info(
            "text embeddings: %d prompts in %.1f s -> %s", len(prompts), time.perf_counter() - t0, folder
        )


class LiveEncoder:
    """Text embeddings computed per batch by text encoders kept on the device."""

    def __init__(self, text_pipe, s: FluxKontextSettings, device, dtype):
        self.pipe, self.s, self.device, self.dtype = text_pipe, s, device, dtype

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled = encode_prompts(self.pipe, prompts, self.s.max_sequence_length, self.device)
        return embeds.to(self.dtype), pooled.to(self.dtype)


def load_text_pipeline(pretrained: str, dtype: torch.dtype, device):
    """The Kontext pipeline with only its tokenizers and text encoders loaded."""
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(pretrained, transformer=None, vae=None, torch_dtype=dtype)
    return pipe.to(device)


def make_prompt_encoder(accelerator, s: FluxKontextSettings, prompts: Sequence[str], cache_dir: Path, dtype):
    """A callable prompts -> (embeds, pooled): precomputed cache (encoders freed) or live encoders."""
    from diffusers.training_utils import free_memory

    if not s.precompute_text_embeddings:
        return LiveEncoder(
            load_text_pipeline(s.pretrained, dtype, accelerator.device), s, accelerator.device, dtype
        )
    if accelerator.is_main_process:
        key = PromptCache.key(s.pretrained, prompts, s.max_sequence_length, dtype)
        index = cache_dir / "index.json"
        if not (index.exists() and read_json(index).get("key") == key):
            text_pipe = load_text_pipeline(s.pretrained, dtype, accelerator.device)
            PromptCache.build(cache_dir, text_pipe, prompts, s, accelerator.device, dtype)
            del text_pipe
            free_memory()
    accelerator.wait_for_everyone()
    return PromptCache(cache_dir, dtype)


# ---------------------------------------------------------------- model, latents, loss


def weight_dtype_of(mixed_precision: str) -> torch.dtype:
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def load_denoiser(pretrained: str, dtype: torch.dtype, device):
    """(transformer, vae, scheduler) of a Kontext checkpoint (local folder or hub id), frozen."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(
        pretrained, subfolder="transformer", torch_dtype=dtype
    )
    vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae", torch_dtype=dtype)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(pretrained, subfolder="scheduler")
    for m in (transformer, vae):
        m.requires_grad_(False).to(device)
    vae.eval()
    return transformer, vae, scheduler


def add_lora(transformer, s: FluxKontextSettings) -> None:
    """Attach a trainable peft LoRA (gaussian A, zero B: starts as the identity edit)."""
    from peft import LoraConfig

    config = LoraConfig(
        r=s.lora_rank, lora_alpha=s.alpha, init_lora_weights="gaussian", target_modules=s.target_modules
    )
    transformer.add_adapter(config)


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
    import torch

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


def sample_sigmas(s: FluxKontextSettings, train_sigmas: torch.Tensor, n: int, generator) -> torch.Tensor:
    """Noise levels for a batch, drawn with the configured density (uniform, logit-normal, mode)."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(
        s.weighting_scheme, n, s.logit_mean, s.logit_std, s.mode_scale, generator.device, generator
    )
    idx = (u * len(train_sigmas)).long().clamp(0, len(train_sigmas) - 1)
    return train_sigmas.to(u.device)[idx]


# ---------------------------------------------------------------- validation


@dataclass
class ValidationSet:
    """A fixed handful of rows: cached latents and embeddings, fixed noise and stratified noise levels."""

    pixels_in: list[np.ndarray]
    pixels_out: list[np.ndarray]
    prompts: list[str]
    x0: torch.Tensor
    context: torch.Tensor
    embeds: torch.Tensor
    pooled: torch.Tensor
    noise: torch.Tensor
    sigmas: torch.Tensor

    def batch(self, sl: slice) -> tuple[torch.Tensor, ...]:
        """Positional arguments of :func:`flow_matching_loss` for the rows ``sl``."""
        return (
            self.x0[sl],
            self.context[sl],
            self.embeds[sl],
            self.pooled[sl],
            self.sigmas[sl],
            self.noise[sl],
        )


def build_validation_set(ds, s: FluxKontextSettings, vae, encoder, device, dtype) -> ValidationSet:
    import torch

    n = min(len(ds), max(s.validation_loss_samples, s.num_validation_images))
    data = TripletDataset(ds.select(range(n)), s.resolution)
    rows = [data[i] for i in range(n)]
    batch = collate(rows)
    with torch.no_grad():
        x0 = torch.cat([encode_latents(vae, b) for b in batch["target"].split(8)]).to(dtype)
        context = torch.cat([encode_latents(vae, b) for b in batch["context"].split(8)]).to(dtype)
    embeds, pooled = encoder(batch["prompt"])
    gen = torch.Generator().manual_seed(s.seed)
    noise = torch.randn(x0.shape, generator=gen).to(device, dtype)
    sigmas = ((torch.arange(n) + 0.5) / n).to(device)

    def to_uint8(t: torch.Tensor) -> np.ndarray:
        return ((t.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)

    return ValidationSet(
        [to_uint8(t) for t in batch["context"]],
        [to_uint8(t) for t in batch["target"]],
        batch["prompt"],
        x0,
        context,
        embeds.to(device),
        pooled.to(device),
        noise,
        sigmas,
    )


def validation_loss(transformer, val: ValidationSet, guidance_scale: float, batch_size: int = 4) -> float:
    """Deterministic flow-matching loss on the validation rows (same noise and noise levels every time)."""
    import torch

    losses = []
    with torch.no_grad():
        for i in range(0, len(val.prompts), batch_size):
            sl = slice(i, i + batch_size)
            losses.append(flow_matching_loss(transformer, *val.batch(sl), guidance_scale=guidance_scale))
    return float(torch.cat(losses).mean())


def validation_grid(pipe, val: ValidationSet, s: FluxKontextSettings, path: Path) -> None:
    """Relight the first validation rows and save a grid: input | output | target per row."""
    import torch
    from PIL import Image

    rows = []
    for i in range(min(s.num_validation_images, len(val.prompts))):
        out = pipe(
            image=Image.fromarray(val.pixels_in[i]),
            prompt_embeds=val.embeds[i : i + 1],
            pooled_prompt_embeds=val.pooled[i : i + 1],
            height=s.resolution,
            width=s.resolution,
            max_area=s.resolution**2,
            _auto_resize=False,
            num_inference_steps=s.validation_inference_steps,
            guidance_scale=s.guidance_scale,
            generator=torch.Generator().manual_seed(s.seed + i),
        ).images[0]
        rows.append(np.hstack([val.pixels_in[i], np.asarray(out.convert("RGB")), val.pixels_out[i]]))
    if rows:
        save_image(path, np.vstack(rows))


def validation_pipeline(transformer, vae, scheduler, text_pipe=None):
    """A Kontext pipeline around the training modules (text encoders only when kept live)."""
    import copy

    from diffusers import FluxKontextPipeline

    text = {
        k: getattr(text_pipe, k, None) for k in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    }
    pipe = FluxKontextPipeline(scheduler=copy.deepcopy(scheduler), vae=vae, transformer=transformer, **text)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------- checkpoints


@dataclass
class TrainerState:
    """Progress saved with every checkpoint."""

    global_step: int = 0
    seconds: float = 0.0
    losses: list[list[float]] = field(default_factory=list)  # [step, mean train loss]
    val_losses: list[list[float]] = field(default_factory=list)  # [step, validation loss]


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints ``checkpoint-<step>`` sorted by step (temporary folders are ignored)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(
        (p for p in found if p.name.startswith("checkpoint-")), key=lambda p: int(p.name.split("-")[1])
    )


def lora_state(transformer) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer)


def save_lora(folder: Path, transformer) -> None:
    """``FluxKontextPipeline.save_lora_weights`` (with the adapter config as metadata)."""
    from diffusers import FluxKontextPipeline

    FluxKontextPipeline.save_lora_weights(
        folder,
        transformer_lora_layers=lora_state(transformer),
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


def register_lora_hooks(accelerator, s: FluxKontextSettings) -> None:
    """Make ``save_state``/``load_state`` store the LoRA only, never the frozen base weights."""
    import torch
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


def save_checkpoint(accelerator, folder: Path, state: TrainerState, rng, limit: int | None) -> None:
    """``accelerator.save_state`` into a temporary folder, renamed when complete; oldest ones rotated out."""
    import torch

    final = folder / f"checkpoint-{state.global_step}"
    tmp = folder / f"tmp-checkpoint-{state.global_step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(rng.get_state(), tmp / f"noise_rng_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        write_json(tmp / TRAINER_STATE, asdict(state))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(folder)[: -limit or None] if limit else []:
            shutil.rmtree(old)
        log.info("checkpoint %s", final)
    accelerator.wait_for_everyone()


def resume(accelerator, folder: Path, rng) -> TrainerState:
    """Load the latest complete checkpoint (LoRA, optimizer, scheduler, RNG); fresh state if none."""
    import torch

    found = list_checkpoints(folder)
    if not found:
        return TrainerState()
    latest = found[-1]
    accelerator.load_state(str(latest))
    rng.set_state(torch.load(latest / f"noise_rng_{accelerator.process_index}.pt"))
    state = TrainerState(**read_json(latest / TRAINER_STATE))
    log.info("resumed from %s (step %d)", latest, state.global_step)
    return state


# ---------------------------------------------------------------- outputs


def model_info(s: FluxKontextSettings, state: TrainerState) -> dict[str, Any]:
    """``relightflow_model.json``: what ``load_relighter`` needs to rebuild the pipeline."""
    return {
        "kind": KIND,
        "base_model": s.pretrained,
        "lora_weights": LORA_WEIGHTS,
        "lora_rank": s.lora_rank,
        "lora_alpha": s.alpha,
        "lora_target_modules": s.target_modules,
        "resolution": s.resolution,
        "guidance_scale": s.guidance_scale,
        "max_sequence_length": s.max_sequence_length,
        "num_inference_steps": s.validation_inference_steps,
        "steps": state.global_step,
    }


def training_metrics(state: TrainerState, n_train: int, n_val: int) -> dict[str, Any]:
    tail = [loss for _, loss in state.losses[-max(1, len(state.losses) // 10) :]]
    head = [loss for _, loss in state.losses[: max(1, len(state.losses) // 10)]]
    return {
        "steps": state.global_step,
        "seconds": round(state.seconds, 1),
        "train_examples": n_train,
        "validation_examples": n_val,
        "train_loss_first": float(np.mean(head)) if head else None,
        "train_loss_last": float(np.mean(tail)) if tail else None,
        "val_loss_initial": state.val_losses[0][1] if state.val_losses else None,
        "val_loss_final": state.val_losses[-1][1] if state.val_losses else None,
        "val_losses": state.val_losses,
    }


def model_card(s: FluxKontextSettings, metrics: dict[str, Any], dataset_dir: str, val_dir: str | None) -> str:
    """A Hugging Face model card (YAML metadata + what was trained on what, and how well)."""
    from huggingface_hub import ModelCardData

    meta = ModelCardData(
        base_model=s.pretrained,
        library_name="diffusers",
        tags=["flux", "flux-kontext", "lora", "relighting", "image-editing", "relightflow"],
        pipeline_tag="image-to-image",
    ).to_yaml()
    settings = s.model_dump(exclude={"pretrained"})
    rows = "\n".join(
        f"| {k} | {round(v, 4) if isinstance(v, float) else v} |"
        for k, v in metrics.items()
        if k != "val_losses"
    )
    return f"""---
{meta}
---

# Relighting LoRA for {s.pretrained}

LoRA (rank {s.lora_rank}, alpha {s.alpha}) on the attention projections of the FLUX.1 Kontext transformer,
trained by relightflow on (degraded image, lighting instruction, original) triplets: the degraded image is
the Kontext context image, the instruction is the prompt, the original is the target.

## Data
- train: `{dataset_dir}` ({metrics["train_examples"]} triplets)
- validation: `{val_dir or "first rows of train"}` ({metrics["validation_examples"]} rows for the loss)

## Metrics (flow-matching loss; validation uses fixed noise and noise levels)
| metric | value |
|---|---|
{rows}

## Use
```python
import torch
from diffusers import FluxKontextPipeline
pipe = FluxKontextPipeline.from_pretrained("{s.pretrained}", torch_dtype=torch.bfloat16).to("cuda")
pipe.load_lora_weights("<this folder>", weight_name="{LORA_WEIGHTS}")
image = pipe(image=photo, prompt="soft warm light from the left", guidance_scale={s.guidance_scale}).images[0]
```
or `relightflow.train.flux_kontext.load_relighter("<this folder>")(photo, prompt)`.

## Training settings
```json
{json.dumps(settings, indent=2, default=str)}
```
"""


def write_outputs(
    out: Path, transformer, s: FluxKontextSettings, state, metrics, dataset_dir, val_dir
) -> None:
    """LoRA weights (atomically), metrics, model card, then ``relightflow_model.json`` last."""
    staging = out / ".lora-staging"
    shutil.rmtree(staging, ignore_errors=True)
    save_lora(staging, transformer)
    os.replace(staging / LORA_WEIGHTS, out / LORA_WEIGHTS)
    shutil.rmtree(staging, ignore_errors=True)
    write_json(out / "training_metrics.json", metrics)
    write_text(out / "README.md", model_card(s, metrics, dataset_dir, val_dir))
    write_json(out / MODEL_INFO, model_info(s, state))


# ---------------------------------------------------------------- training


def make_accelerator(s: FluxKontextSettings, project_dir: Path):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin

    return Accelerator(
        mixed_precision=s.mixed_precision if s.mixed_precision in ("fp16", "bf16") else "no",
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=s.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=s.seed),
        cpu=not torch.cuda.is_available(),
        project_dir=str(project_dir),
    )


def make_optimizer(params, s: FluxKontextSettings):
    import torch

    if s.use_8bit_adam:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=s.learning_rate, weight_decay=1e-4)
    return torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=1e-4)


class Trainer:
    """One LoRA training run: models, data, optimizer and the loop with checkpoints and validation."""

    def __init__(self, s: FluxKontextSettings, dataset_dir: str, val_dir: str | None, out: Path, ckpt: Path):
        import torch
        from accelerate.utils import set_seed
        from diffusers.training_utils import cast_training_params

        self.s, self.out, self.ckpt = s, out, ckpt
        self.accelerator = acc = make_accelerator(s, ckpt)
        set_seed(s.seed)
        self.dtype = weight_dtype_of(acc.mixed_precision)
        self.train_ds = load_triplets(dataset_dir)
        self.val_ds = load_triplets(val_dir) if val_dir else None
        val_source = self.val_ds if self.val_ds is not None else self.train_ds
        n_val = min(len(val_source), max(s.validation_loss_samples, s.num_validation_images))
        self.val_rows = val_source.select(range(n_val))
        prompts = distinct_prompts(self.train_ds, self.val_rows)
        self.encoder = make_prompt_encoder(acc, s, prompts, ckpt / "text_embeddings", self.dtype)
        self.transformer, self.vae, self.scheduler = load_denoiser(s.pretrained, self.dtype, acc.device)
        self.train_sigmas = self.scheduler.sigmas.clone()
        self._check_resolution()
        if s.fp8_base_weights:  # before the adapter, so LoRA weights are never stored in float8
            self.transformer.enable_layerwise_casting(
                storage_dtype=torch.float8_e4m3fn, compute_dtype=self.dtype
            )
        add_lora(self.transformer, s)
        if s.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        cast_training_params([self.transformer], dtype=torch.float32)  # trainable LoRA weights in fp32
        register_lora_hooks(acc, s)
        self.params = [p for p in self.transformer.parameters() if p.requires_grad]
        self._prepare()
        self.rng = torch.Generator(device=acc.device).manual_seed(s.seed + acc.process_index)

    def _check_resolution(self) -> None:
        multiple = 2 ** len(self.vae.config.block_out_channels)  # VAE factor x 2x2 packing
        if self.s.resolution % multiple:
            raise ValueError(f"train.resolution {self.s.resolution} must be a multiple of {multiple}")

    def _prepare(self) -> None:
        import torch
        from diffusers.optimization import get_scheduler

        acc, s = self.accelerator, self.s
        loader = torch.utils.data.DataLoader(
            TripletDataset(self.train_ds, s.resolution),
            batch_size=s.batch_size,
            shuffle=True,
            drop_last=len(self.train_ds) >= s.batch_size * acc.num_processes,
            collate_fn=collate,
            num_workers=s.dataloader_num_workers,
        )
        optimizer = make_optimizer(self.params, s)
        lr_scheduler = get_scheduler(
            s.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=s.lr_warmup_steps * acc.num_processes,
            num_training_steps=s.max_steps * acc.num_processes,
        )
        self.transformer, self.optimizer, self.loader, self.lr_scheduler = acc.prepare(
            self.transformer, optimizer, loader, lr_scheduler
        )
        if len(self.loader) == 0:
            raise ValueError("training split is empty")

    # -- one step
    def step_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        import torch
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        with torch.no_grad():
            x0 = encode_latents(self.vae, batch["target"]).to(self.dtype)
            context = encode_latents(self.vae, batch["context"]).to(self.dtype)
            embeds, pooled = (t.to(self.accelerator.device) for t in self.encoder(batch["prompt"]))
        noise = torch.randn(x0.shape, generator=self.rng, device=self.rng.device).to(x0.device, x0.dtype)
        sigmas = sample_sigmas(self.s, self.train_sigmas, x0.shape[0], self.rng).to(x0.device)
        weighting = compute_loss_weighting_for_sd3(self.s.weighting_scheme, sigmas)
        loss = flow_matching_loss(
            self.transformer, x0, context, embeds, pooled, sigmas, noise, self.s.guidance_scale, weighting
        )
        return loss.mean()

    def optimize(self, batch: dict[str, Any]) -> float:
        acc = self.accelerator
        with acc.accumulate(self.transformer):
            loss = self.step_loss(batch)
            acc.backward(loss)
            if acc.sync_gradients and self.s.max_grad_norm > 0:
                acc.clip_grad_norm_(self.params, self.s.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
        return float(loss.detach())

    # -- validation
    def validate(self, state: TrainerState, grid: bool = True) -> None:
        """On the main process: record the validation loss and, with ``grid``, save a validation grid."""
        acc = self.accelerator
        if not acc.is_main_process:
            return
        model = acc.unwrap_model(self.transformer)
        model.eval()
        if not hasattr(self, "val_set"):
            self.val_set = build_validation_set(
                self.val_rows, self.s, self.vae, self.encoder, acc.device, self.dtype
            )
        with acc.autocast():
            loss = validation_loss(model, self.val_set, self.s.guidance_scale)
            state.val_losses.append([state.global_step, loss])
            log.info("step %d: validation loss %.5f", state.global_step, loss)
            if grid and self.s.num_validation_images:
                pipe = validation_pipeline(
                    model, self.vae, self.scheduler, getattr(self.encoder, "pipe", None)
                )
                validation_grid(
                    pipe, self.val_set, self.s, self.out / "validation" / f"step-{state.global_step:06d}.png"
                )
        model.train()

    # -- loop
    def run(self, dataset_dir: str, val_dir: str | None) -> Path:
        import torch

        acc, s = self.accelerator, self.s
        state = resume(acc, self.ckpt, self.rng)
        if not state.val_losses:
            self.validate(state, grid=False)
        self.transformer.train()
        t0, window = time.perf_counter() - state.seconds, []
        per_epoch = len(self.loader)
        while state.global_step < s.max_steps:
            consumed = state.global_step * s.gradient_accumulation_steps
            self.loader.set_epoch(consumed // per_epoch)
            loader = (
                acc.skip_first_batches(self.loader, consumed % per_epoch)
                if consumed % per_epoch
                else self.loader
            )
            for batch in loader:
                window.append(self.optimize(batch))
                if not acc.sync_gradients:
                    continue
                state.global_step += 1
                mean = acc.reduce(torch.tensor(np.mean(window), device=acc.device), "mean").item()
                state.losses.append([state.global_step, mean])
                window = []
                state.seconds = time.perf_counter() - t0
                self._after_step(state)
                if state.global_step >= s.max_steps:
                    break
        self._finish(state, dataset_dir, val_dir)
        return self.out

    def _after_step(self, state: TrainerState) -> None:
        s, step = self.s, state.global_step
        if step % max(1, s.max_steps // 100) == 0 or step == 1:
            log.info(
                "step %d/%d loss %.5f lr %.2e",
                step,
                s.max_steps,
                state.losses[-1][1],
                self.lr_scheduler.get_last_lr()[0],
            )
        if step % s.validation_steps == 0 and step < s.max_steps:
            self.validate(state)
        if step % s.checkpointing_steps == 0 or step == s.max_steps:
            save_checkpoint(self.accelerator, self.ckpt, state, self.rng, s.checkpoints_total_limit)

    def _finish(self, state: TrainerState, dataset_dir: str, val_dir: str | None) -> None:
        acc = self.accelerator
        if not state.val_losses or state.val_losses[-1][0] != state.global_step:
            self.validate(state)
        acc.wait_for_everyone()
        if acc.is_main_process:
            metrics = training_metrics(state, len(self.train_ds), len(self.val_rows))
            model = acc.unwrap_model(self.transformer)
            write_outputs(self.out, model, self.s, state, metrics, dataset_dir, val_dir)
            log.info(
                "LoRA saved to %s: %s", self.out, {k: v for k, v in metrics.items() if k != "val_losses"}
            )
        acc.wait_for_everyone()
        acc.end_training()


def train_flux_kontext(
    dataset_dir: str, val_dir: str | None, output_dir: str, cfg: dict, checkpoints_dir: str | None = None
) -> Path:
    """Train a Kontext relighting LoRA on an exported dataset split; returns ``output_dir``.

    ``cfg`` is the ``train:`` config section (``train.flux.*`` holds the Kontext-only keys). Checkpoints
    default to ``<output_dir>.checkpoints`` (outside the rule's output, so a failed job keeps them) and
    the latest one is resumed automatically.
    """
    s = FluxKontextSettings.from_config(cfg)
    out = Path(output_dir)
    ckpt = Path(checkpoints_dir) if checkpoints_dir else out.with_name(out.name + ".checkpoints")
    out.mkdir(parents=True, exist_ok=True)
    ckpt.mkdir(parents=True, exist_ok=True)
    return Trainer(s, dataset_dir, val_dir, out, ckpt).run(dataset_dir, val_dir)


# ---------------------------------------------------------------- inference


def is_flux_kontext_model(model_dir: str | os.PathLike) -> bool:
    """True when ``model_dir`` holds this trainer's LoRA output."""
    info = Path(model_dir) / MODEL_INFO
    return info.is_file() and read_json(info).get("kind") == KIND


def generation_size(size: tuple[int, int], resolution: int, multiple: int) -> tuple[int, int]:
    """(width, height) with the input's aspect ratio, about ``resolution**2`` pixels, multiples of ``multiple``."""
    w, h = size
    scale = math.sqrt(resolution * resolution / (w * h))
    return max(multiple, round(w * scale / multiple) * multiple), max(
        multiple, round(h * scale / multiple) * multiple
    )


def load_kontext_with_lora(model_dir, info: dict, device, dtype, pretrained=None, offload=None, fp8=False):
    """The base Kontext pipeline with the LoRA loaded (optionally fp8 transformer storage, CPU offload)."""
    import torch
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(pretrained or info["base_model"], torch_dtype=dtype)
    if fp8:  # before the LoRA: base weights in float8, upcast per layer; LoRA weights back to ``dtype``
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    pipe.load_lora_weights(str(model_dir), weight_name=info.get("lora_weights", LORA_WEIGHTS))
    for name, p in pipe.transformer.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(dtype)
    if offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_relighter(
    model_dir: str | os.PathLike,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    pretrained: str | None = None,
    cpu_offload: bool | str = False,
    fp8: bool = False,
) -> Callable[..., Image.Image]:
    """``relight(image, prompt, **kw) -> image`` from a LoRA folder written by :func:`train_flux_kontext`.

    The base pipeline comes from the folder's ``relightflow_model.json`` (or ``pretrained``).
    ``cpu_offload``: ``True``/``"model"`` (one model on the GPU at a time) or ``"sequential"`` (layer by
    layer, slowest, least memory); ``fp8`` stores the transformer in float8 (half the memory, see
    docs/flux.md). Keywords of ``relight``: ``num_inference_steps``, ``guidance_scale``, ``seed``,
    ``resolution`` (generation area side, default the training resolution), ``lora_scale``. The output has
    the input's size.
    """
    import torch
    from PIL import Image

    info = read_json(Path(model_dir) / MODEL_INFO)
    if info.get("kind") != KIND:
        raise ValueError(f"{model_dir} is not a {KIND} folder (kind={info.get('kind')!r})")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    offload = "model" if cpu_offload is True else (cpu_offload or None)
    pipe = load_kontext_with_lora(model_dir, info, device, dtype, pretrained, offload, fp8)
    multiple = pipe.vae_scale_factor * 2

    def relight(
        image: Image.Image,
        prompt: str,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        resolution: int | None = None,
        lora_scale: float = 1.0,
    ) -> Image.Image:
        image = image.convert("RGB")
        w, h = generation_size(image.size, resolution or info["resolution"], multiple)
        out = pipe(
            image=image.resize((w, h), Image.Resampling.LANCZOS),
            prompt=prompt,
            height=h,
            width=w,
            max_area=w * h,
            _auto_resize=False,
            num_inference_steps=num_inference_steps or info.get("num_inference_steps", 28),
            guidance_scale=info["guidance_scale"] if guidance_scale is None else guidance_scale,
            max_sequence_length=info.get("max_sequence_length", 512),
            generator=torch.Generator().manual_seed(seed),
            joint_attention_kwargs={"scale": lora_scale},
        ).images[0]
        return out if out.size == image.size else out.resize(image.size, Image.Resampling.LANCZOS)

    relight.pipeline = pipe  # type: ignore[attr-defined]
    return relight


__all__ = [
    "ATTENTION_MODULES",
    "FluxKontextSettings",
    "KIND",
    "LORA_WEIGHTS",
    "MODEL_INFO",
    "is_flux_kontext_model",
    "load_relighter",
    "train_flux_kontext",
]
