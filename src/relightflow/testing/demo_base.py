"""The CPU demo's tiny *pretrained* base: an SD1.5-layout InstructPix2Pix pipeline whose autoencoder
reconstructs images and whose UNet already reproduces its input image, the toy counterpart of fine-tuning
a pretrained Stable Diffusion 1.5 (the real workflow) instead of training from random weights.

Two entry points:

- :func:`install_demo_base` (seconds): writes a diffusers pipeline folder from the weights shipped in the
  package (``relightflow/data/demo_base.safetensors``, fp16, configs in its metadata). The trainer loads it
  with ``from_pretrained`` like any real checkpoint (its UNet already has 8 input channels).
- :func:`build_demo_base` (tens of minutes on 2 CPU cores, done once): pretrains those weights from
  scratch and writes them with a provenance JSON beside them. Command that made the shipped file::

      PYTHONPATH=src python scripts/build_demo_base.py --seed 0

Pretraining data, all offline and disjoint from the demo's own images (:mod:`relightflow.demo`): rendered
scenes with seeds ≥ 10000 and random exposure/ambient, colour photos that the demo does not use
(matplotlib's samples, skimage's colour wheel and logo), skimage's greyscale photos the demo does not use,
coloured with random two-colour maps, and procedural images (random shapes on gradients, textured, blurred),
seen as random crops at random scales with colour jitter. The autoencoder (f=2, 4 latent channels, no
attention) learns L1 + MSE reconstruction; its posterior log-variance is then pinned to −12 (std 0.0025)
so the trainer's ``latent_dist.sample()`` is a clean latent, as with a real SD VAE, and its
``scaling_factor`` is set to 1/std of the latents. The UNet then learns denoising with target = input
(identity edits) under random caption-like prompts from the frozen random text encoder, with the trainer's
conditioning dropout, so a freshly installed pipeline returns (a VAE round trip of) its input image.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "demo_base.safetensors"
PROVENANCE = WEIGHTS.with_suffix(".json")
RESOLUTION = 64
VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 64], latent_channels=4,
    layers_per_block=1, norm_num_groups=32, sample_size=RESOLUTION, force_upcast=False,
    mid_block_add_attention=False,
)  # fmt: skip
PRETRAIN_SCENE_SEED = 10_000  # pretraining scenes use seeds from here (the demo's stay below 1000)
HELD_OUT_SEED = 5000  # the held-out check scene: in neither set
POSTERIOR_LOGVAR = -12.0  # posterior std 0.0025: sample() ≈ mode(), like a real SD VAE
SCHEDULER = dict(
    num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    prediction_type="v_prediction",  # x0 is well conditioned at every noise level: few-step sampling works
)  # fmt: skip
PROMPT_WORDS = {
    "light": ("soft daylight", "hard daylight", "daylight", "lamp light", "soft light", "hard red light",
              "soft blue light", "window light", "candle light"),
    "direction": ("left", "right", "top", "bottom", "front", "upper left", "upper right", "lower left",
                  "lower right"),
    "temperature": ("warm", "neutral", "cool"),
}  # fmt: skip
# demo photos (relightflow.demo.SKIMAGE_PHOTOS) and their aliases are never used for pretraining
GREY_PHOTOS = ("clock", "coins", "moon", "page", "text", "cell", "horse", "microaneurysms")
MPL_PHOTOS = ("Minduka_Present_Blue_Pack.png", "logo2.png")
SKIMAGE_COLOUR = ("colorwheel", "logo")
Pool = tuple[list[np.ndarray], np.ndarray]  # images, sampling weights


# ---------------------------------------------------------------- pretraining images


def _flatten_alpha(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGBA → RGB over a random flat colour; greyscale → RGB."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255.0
        bg = rng.uniform(0, 255, 3).astype(np.float32)
        image = image[..., :3] * alpha + bg * (1 - alpha)
    return np.clip(image[..., :3], 0, 255).astype(np.uint8)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float64)
    return (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-8)).astype(np.uint8)


def colourize(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A greyscale image through a random two- or three-colour map (uint8 RGB)."""
    t = (grey.astype(np.float32) / 255.0) ** rng.uniform(0.6, 1.6)
    stops = rng.uniform(0, 1, (int(rng.integers(2, 4)), 3)).astype(np.float32)
    stops[0] *= 0.4  # a dark end
    pos = t[..., None] * (len(stops) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(stops) - 2)
    frac = pos - lo
    rgb = stops[lo[..., 0]] * (1 - frac) + stops[lo[..., 0] + 1] * frac
    return (255 * rgb).astype(np.uint8)


def procedural_image(rng: np.random.Generator, size: int = 160) -> np.ndarray:
    """Random antialiased shapes over a colour gradient, optionally textured and blurred (uint8 RGB)."""
    c0, c1 = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ramp = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)[..., None]
    img = (c0 * (1 - ramp) + c1 * ramp).astype(np.uint8).copy()
    for _ in range(int(rng.integers(3, 14))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 4))
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        if kind == 0:
            axes = tuple(int(v) for v in rng.integers(3, size // 2, 2))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            pts = rng.integers(0, size, (int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
        elif kind == 2:
            end = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.line(img, centre, end, colour, int(rng.integers(1, 6)), cv2.LINE_AA)
        else:
            cv2.circle(
                img, centre, int(rng.integers(2, size // 4)), colour, int(rng.integers(1, 4)), cv2.LINE_AA
            )
    if rng.random() < 0.5:
        sigma = rng.uniform(0.5, 4.0)
        noise = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma)
        img = np.clip(img * (1 + rng.uniform(0.05, 0.3) * noise / (noise.std() + 1e-6))[..., None], 0, 255)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.3, 1.5))
    return np.asarray(img).astype(np.uint8)


def random_scene(rng: np.random.Generator, seed: int, size: int = 128) -> np.ndarray:
    """A rendered scene with random light, exposure and ambient (seeds ≥ 10000: never a demo scene)."""
    from relightflow.testing.scenes import LIGHT_COLORS, Scene, render_scene

    scene = Scene(
        horizontal=str(rng.choice(["left", "front", "right"])),
        vertical=str(rng.choice(["above", "level", "below"])),
        color_temperature=str(rng.choice(list(LIGHT_COLORS))),
        exposure=float(rng.uniform(0.35, 1.3)),
        ambient=float(rng.uniform(0.03, 0.7)),
        size=size,
        seed=PRETRAIN_SCENE_SEED + seed,
    )
    return render_scene(scene)[0]


def pretraining_pool(
    seed: int = 0, n_scenes: int = 96, n_procedural: int = 160
) -> tuple[list[np.ndarray], np.ndarray]:
    """Every pretraining image (uint8 RGB), none of them a demo image, and its sampling weight (photos,
    scenes and procedural images are drawn 40 / 30 / 30 % of the time)."""
    import matplotlib.cbook
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    pool = [
        _flatten_alpha(np.asarray(Image.open(matplotlib.cbook.get_sample_data(n))), rng) for n in MPL_PHOTOS
    ]
    pool += [_flatten_alpha(_as_uint8(getattr(data, n)()), rng) for n in SKIMAGE_COLOUR]
    for name in GREY_PHOTOS:
        grey = _as_uint8(getattr(data, name)())
        pool += [colourize(grey, rng) for _ in range(3)]
    groups = [pool, [random_scene(rng, i) for i in range(n_scenes)]]
    groups.append([procedural_image(rng) for _ in range(n_procedural)])
    weights = np.concatenate(
        [np.full(len(g), share / len(g)) for g, share in zip(groups, (0.4, 0.3, 0.3), strict=True)]
    )
    return [im for g in groups for im in g], weights


def random_crop(image: np.ndarray, rng: np.random.Generator, size: int = RESOLUTION) -> np.ndarray:
    """A square crop covering 25-100 % of the shorter side (often the whole frame), resized to ``size``,
    randomly flipped and colour-jittered (per-channel gain, gamma): float32 HxWx3 in [0, 1]."""
    h, w = image.shape[:2]
    side = min(h, w)
    crop = int(side * (1.0 if rng.random() < 0.3 else rng.uniform(0.25, 1.0)))
    crop = max(crop, min(size // 2, side))
    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    patch = image[top : top + crop, left : left + crop]
    interp = cv2.INTER_AREA if crop >= size else cv2.INTER_CUBIC
    patch = cv2.resize(patch, (size, size), interpolation=interp).astype(np.float32) / 255.0
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.7:
        patch = np.clip(patch * rng.uniform(0.7, 1.25, 3), 0, 1) ** rng.uniform(0.75, 1.3)
    return np.ascontiguousarray(patch, dtype=np.float32)


def sample_batch(
    pool: Pool, rng: np.random.Generator, batch: int, size: int = RESOLUTION, patch: int | None = None
):
    """A torch batch Bx3xPxP in [-1, 1] of random crops of pool images drawn by weight, seen at ``size`` px
    (``patch`` < ``size``: a random window of that many px of each, cheaper at the same scale)."""
    import torch

    images, weights = pool
    crops = [random_crop(images[i], rng, size) for i in rng.choice(len(images), batch, p=weights)]
    if patch and patch < size:
        corners = rng.integers(0, size - patch + 1, (batch, 2))
        crops = [c[y : y + patch, x : x + patch] for c, (y, x) in zip(crops, corners, strict=True)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).mul(2).sub(1).contiguous()


# ---------------------------------------------------------------- models


def tokenizer_and_text_encoder(seed: int):
    """The demo's CLIP tokenizer (open_clip BPE, 1000 merges) and a random frozen tiny text encoder."""
    import torch
    from transformers import CLIPTextModel

    from relightflow.testing.tiny_sd import offline_clip_tokenizer, tiny_text_config

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = offline_clip_tokenizer(tmp)
    torch.manual_seed(seed)
    return tokenizer, CLIPTextModel(tiny_text_config(tokenizer)).eval().requires_grad_(False)


def new_vae(config: dict[str, Any] | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**(config or VAE_CONFIG))


def new_unet():
    from relightflow.testing.tiny_sd import tiny_unet

    return tiny_unet("sd15", RESOLUTION, in_channels=8)


def pin_posterior(vae, logvar: float = POSTERIOR_LOGVAR) -> None:
    """Make the posterior's log-variance a constant (the second half of ``quant_conv``'s outputs)."""
    import torch

    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[c:].zero_()
        vae.quant_conv.bias[c:].fill_(logvar)


def psnr(a, b) -> float:
    """PSNR (dB) of two tensors in [-1, 1]."""
    mse = float(((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-10))


# ---------------------------------------------------------------- pretraining


def _cosine(step: int, steps: int, lr: float, warmup: int = 50) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def _loop(
    name: str, params, steps: int, lr: float, loss_fn: Callable[[int], Any], log_every: int = 50
) -> list[float]:
    """AdamW with warm-up + cosine decay over ``steps`` calls of ``loss_fn(step)``; returns the losses."""
    import torch

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    losses, start = [], time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _cosine(step, steps, lr)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step == 0:
            recent = float(np.mean(losses[-log_every:]))
            log.info("%s step %d/%d loss %.5f (%.0f s)", name, step + 1, steps, recent, time.time() - start)
    return losses


def train_vae(
    vae, pool, steps: int, batch: int, lr: float, rng: np.random.Generator, patch: int = 32
) -> list[float]:
    """L1 + MSE reconstruction through the posterior mean, a little latent noise for a robust decoder;
    ``patch``-px windows of 64-px crops (the VAE has no attention: any window size works)."""
    import torch
    import torch.nn.functional as F

    vae.train()

    def loss_fn(step: int):
        x = sample_batch(pool, rng, batch, patch=patch)
        z = vae.encode(x).latent_dist.mode()
        z = z + 0.02 * z.detach().std() * torch.randn_like(z)
        rec = vae.decode(z).sample
        return F.l1_loss(rec, x) + F.mse_loss(rec, x)

    losses = _loop("vae", list(vae.parameters()), steps, lr, loss_fn)
    vae.eval().requires_grad_(False)
    pin_posterior(vae)
    return losses


def latent_scale(vae, pool, rng: np.random.Generator, n: int = 256) -> float:
    """1 / std of the posterior means over ``n`` random crops (SD's ``scaling_factor``)."""
    import torch

    with torch.no_grad():
        z = torch.cat([vae.encode(sample_batch(pool, rng, 32)).latent_dist.mode() for _ in range(n // 32)])
    return float(1.0 / z.std())


def random_prompts(rng: np.random.Generator, n: int) -> list[str]:
    """Caption-like instructions ("{light} from the {direction}, {temperature} tone")."""
    w = PROMPT_WORDS
    return [
        f"{rng.choice(w['light'])} from the {rng.choice(w['direction'])}, {rng.choice(w['temperature'])} tone"
        for _ in range(n)
    ]


def encode_text(tokenizer, text_encoder, prompts: list[str]):
    import torch

    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids  # fmt: skip
    with torch.no_grad():
        return text_encoder(ids)[0]


def train_unet_identity(
    unet, vae, text, pool, steps: int, batch: int, lr: float, rng: np.random.Generator, dropout: float = 0.05
) -> list[float]:
    """Denoising with target = input (identity edits), v-prediction loss, InstructPix2Pix conditioning
    dropout (text for 2p of the samples, image for 2p, both for p), as the trainer fine-tunes it."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    tokenizer, text_encoder = text
    sched = DDPMScheduler(**SCHEDULER)
    bank = encode_text(tokenizer, text_encoder, random_prompts(rng, 256))
    null = encode_text(tokenizer, text_encoder, [""])
    sf = vae.config.scaling_factor
    unet.train()

    def loss_fn(step: int):
        x = sample_batch(pool, rng, batch)
        with torch.no_grad():
            source = vae.encode(x).latent_dist.mode()
        target = source * sf
        noise = torch.randn_like(target)
        t = torch.from_numpy(rng.integers(0, sched.config.num_train_timesteps, batch))
        states = bank[torch.from_numpy(rng.integers(0, len(bank), batch))]
        r = torch.from_numpy(rng.random(batch)).float()
        states = torch.where((r < 2 * dropout)[:, None, None], null, states)
        source = source * (1 - ((r >= dropout) & (r < 3 * dropout)).float())[:, None, None, None]
        pred = unet(torch.cat([sched.add_noise(target, noise, t), source], 1), t, states).sample
        return F.mse_loss(pred, sched.get_velocity(target, noise, t))

    losses = _loop("unet", list(unet.parameters()), steps, lr, loss_fn)
    unet.eval().requires_grad_(False)
    return losses


# ---------------------------------------------------------------- held-out checks


def held_out_scene(size: int = RESOLUTION) -> np.ndarray:
    """A rendered scene that neither pretraining (seeds 10000+) nor the demo (seeds < 1000) uses."""
    from relightflow.testing.scenes import Scene, render_scene

    return render_scene(
        Scene("right", "above", "warm", exposure=0.9, ambient=0.3, size=4 * size, seed=HELD_OUT_SEED)
    )[0]


def to_batch(images: Sequence[np.ndarray], size: int = RESOLUTION):
    """uint8 images → a Bx3xSxS batch in [-1, 1] (area-resized to ``size``)."""
    import torch

    arr = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])
    return torch.from_numpy(arr).float().div(127.5).sub(1).permute(0, 3, 1, 2).contiguous()


def vae_round_trip_psnr(vae, images: Sequence[np.ndarray], size: int = RESOLUTION) -> float:
    """Mean PSNR of ``decode(encode(x).sample())`` at ``size`` px, as the trainer encodes targets."""
    import torch

    x = to_batch(images, size)
    with torch.no_grad():
        rec = vae.decode(vae.encode(x).latent_dist.sample()).sample
    return float(np.mean([psnr(r, o) for r, o in zip(rec, x, strict=True)]))


# ---------------------------------------------------------------- shipped weights


def _public(config) -> dict[str, Any]:
    """A diffusers config without its private keys (``_use_default_values`` would undo registered values)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def save_weights(path: Path, vae, unet, text_encoder, provenance: dict[str, Any]) -> Path:
    """All three models in one fp16 safetensors file; their configs and the tokenizer in its metadata."""
    from safetensors.torch import save_file

    from relightflow.testing.tiny_sd import write_clip_vocab

    tensors = {}
    for prefix, model in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
        tensors.update(
            {f"{prefix}.{k}": v.detach().half().contiguous() for k, v in model.state_dict().items()}
        )
    meta = {
        "vae_config": json.dumps(_public(vae.config)),
        "unet_config": json.dumps(_public(unet.config)),
        "text_config": text_encoder.config.to_json_string(),
        "provenance": json.dumps(provenance),
    }
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = write_clip_vocab(tmp)
        meta |= {"tokenizer_vocab": vocab.read_text("utf-8"), "tokenizer_merges": merges.read_text("utf-8")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    path.chmod(0o644)
    return path


def load_weights(path: str | os.PathLike = WEIGHTS) -> dict[str, Any]:
    """``{vae, unet, text_encoder, tokenizer, provenance}`` (fp32 modules) from a file that
    :func:`save_weights` wrote."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

    vae = AutoencoderKL.from_config(json.loads(meta["vae_config"]))
    unet = UNet2DConditionModel.from_config(json.loads(meta["unet_config"]))
    text_encoder = CLIPTextModel(CLIPTextConfig(**json.loads(meta["text_config"])))
    for model, prefix in ((vae, "vae"), (unet, "unet"), (text_encoder, "text_encoder")):
        model.load_state_dict(part(prefix), strict=True)
        model.eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab.write_text(meta["tokenizer_vocab"], encoding="utf-8")
        merges.write_text(meta["tokenizer_merges"], encoding="utf-8")
        tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77, pad_token="<|endoftext|>")
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "provenance": json.loads(meta["provenance"])}  # fmt: skip


def assemble_pipeline(vae, unet, text_encoder, tokenizer=None):
    """A StableDiffusionInstructPix2PixPipeline (Euler ancestral, no safety checker) around the models."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    if tokenizer is None:
        from relightflow.testing.tiny_sd import offline_clip_tokenizer

        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = offline_clip_tokenizer(tmp)
    return StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(**SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def install_demo_base(out_dir: str | os.PathLike, weights: str | os.PathLike = WEIGHTS) -> Path:
    """Write the pretrained demo base as a diffusers pipeline folder (atomically; a few seconds)."""
    import shutil

    from relightflow.dataset import replace_dir

    out = Path(out_dir)
    models = load_weights(weights)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    parts = {k: models[k] for k in ("vae", "unet", "text_encoder", "tokenizer")}
    assemble_pipeline(**parts).save_pretrained(tmp)
    replace_dir(tmp, out)
    log.info("installed the pretrained demo base in %s", out)
    return out


# ---------------------------------------------------------------- build


def vae_stage(
    pool: Pool, seed: int, steps: int, batch: int, lr: float, cache: Path | None = None
) -> tuple[Any, dict[str, Any]]:
    """Stage 1: the pretrained VAE (posterior pinned, scaling set) and its record; reused from ``cache``
    (``vae.safetensors`` + ``vae.json``) when a run with the same settings saved it there."""
    import torch
    from safetensors.torch import load_file, save_file

    settings = {"seed": seed, "vae_steps": steps, "vae_batch": batch, "vae_patch": 32, "vae_lr": lr}
    weights, record_path = (cache / "vae.safetensors", cache / "vae.json") if cache else (None, None)
    vae = new_vae()
    if record_path and record_path.exists() and json.loads(record_path.read_text())["settings"] == settings:
        record = json.loads(record_path.read_text())
        vae.load_state_dict(load_file(str(weights)))
        vae.register_to_config(scaling_factor=record["scaling_factor"])
        log.info("VAE stage reused from %s", cache)
        return vae.eval().requires_grad_(False), record
    start = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    losses = train_vae(vae, pool, steps, batch, lr, rng)
    vae.register_to_config(scaling_factor=latent_scale(vae, pool, rng))
    record = {
        "settings": settings, "seconds": round(time.time() - start, 1), "scaling_factor": vae.config.scaling_factor,
        "loss_last100": float(np.mean(losses[-100:])),
        "held_out_scene_psnr": round(vae_round_trip_psnr(vae, [held_out_scene()]), 2),
    }  # fmt: skip
    log.info("VAE stage: %s", record)
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(weights))
        record_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    return vae, record


def unet_stage(
    vae, text, pool: Pool, seed: int, steps: int, batch: int, lr: float
) -> tuple[Any, dict[str, Any]]:
    """Stage 2: the UNet taught to reproduce its input (identity edits) in the stage-1 VAE's latents."""
    import torch

    start = time.time()
    torch.manual_seed(seed + 1)
    rng = np.random.default_rng([seed, 2])
    unet = new_unet()
    losses = train_unet_identity(unet, vae, text, pool, steps, batch, lr, rng)
    record = {
        "settings": {"unet_steps": steps, "unet_batch": batch, "unet_lr": lr,
                     "prediction_type": SCHEDULER["prediction_type"]},
        "seconds": round(time.time() - start, 1), "loss_last100": float(np.mean(losses[-100:])),
    }  # fmt: skip
    return unet, record


def build_demo_base(
    out: str | os.PathLike = WEIGHTS,
    seed: int = 0,
    vae_steps: int = 2500,
    unet_steps: int = 1500,
    vae_batch: int = 16,
    unet_batch: int = 8,
    vae_lr: float = 2e-3,
    unet_lr: float = 5e-4,
    threads: int | None = None,
    cache: str | os.PathLike | None = None,
    command: str | None = None,
) -> Path:
    """Pretrain the demo base from scratch on CPU (see the module doc) and save it to ``out``, with a
    provenance JSON (command, seed, steps, wall time, losses, held-out PSNR) beside it. ``cache``: a folder
    that keeps the VAE stage, so the UNet stage can be rerun alone (each stage has its own seeded RNG)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    start = time.time()
    pool = pretraining_pool(seed)
    log.info("pretraining pool: %d images", len(pool[0]))
    vae, vae_record = vae_stage(pool, seed, vae_steps, vae_batch, vae_lr, Path(cache) if cache else None)
    text = tokenizer_and_text_encoder(seed)
    unet, unet_record = unet_stage(vae, text, pool, seed, unet_steps, unet_batch, unet_lr)
    provenance = {
        "command": command or f"python scripts/build_demo_base.py --seed {seed}",
        "seed": seed, "resolution": RESOLUTION, "pool_images": len(pool[0]), "threads": torch.get_num_threads(),
        "wall_seconds": round(time.time() - start, 1), "vae": vae_record, "unet": unet_record,
        "scaling_factor": vae.config.scaling_factor, "torch": torch.__version__,
    }  # fmt: skip
    out = save_weights(Path(out), vae, unet, text[1], provenance)
    Path(out).with_suffix(".json").write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
    log.info(
        "saved %s (%.1f MB) after %.0f s", out, Path(out).stat().st_size / 1e6, provenance["wall_seconds"]
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=build_demo_base.__doc__)
    parser.add_argument("--out", default=str(WEIGHTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument("--unet-steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", default=None, help="folder that keeps the VAE stage between runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import shlex
    import sys

    build_demo_base(
        args.out, args.seed, args.vae_steps, args.unet_steps, threads=args.threads, cache=args.cache,
        command="python " + shlex.join(sys.argv),
    )  # fmt: skip


if __name__ == "__main__":
    main()
