"""Tiny random Stable Diffusion pipelines (SD1.5 and SDXL layouts), built offline from configs.

They are saved with ``save_pretrained`` and loaded back through the same ``from_pretrained`` code a real
checkpoint uses, so tests, benchmarks and the demo exercise the real code paths in seconds on a CPU.
The CLIP tokenizer is rebuilt from the BPE file that open_clip ships (no hub access): its ids equal
OpenAI CLIP's ids; ``max_merges`` truncates the vocabulary (vocab = 514 + max_merges) for tiny encoders.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path
from typing import Literal

Kind = Literal["sd15", "sdxl"]
TEXT_HIDDEN = 32  # hidden size of each tiny text encoder
TIME_EMBED = 8  # SDXL addition_time_embed_dim of the tiny UNet


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _bpe_merges(max_merges: int | None) -> list[str]:
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as f:
        lines = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    return lines[:max_merges] if max_merges is not None else lines


def write_clip_vocab(out_dir: str | os.PathLike, max_merges: int | None = 1000) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` of the CLIP BPE (truncated to ``max_merges``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = _bpe_merges(max_merges)
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab_path, merges_path = out / "vocab.json", out / "merges.txt"
    vocab_path.write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def offline_clip_tokenizer(work_dir: str | os.PathLike, max_merges: int | None = 1000, max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` built from open_clip's bundled BPE (files written to ``work_dir``)."""
    from transformers import CLIPTokenizer

    vocab, merges = write_clip_vocab(work_dir, max_merges)
    return CLIPTokenizer(str(vocab), str(merges), model_max_length=max_length, pad_token="<|endoftext|>")


def tiny_text_config(tokenizer, projection: bool = False):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu" if projection else "quick_gelu",
    )


def tiny_vae(force_upcast: bool = False):
    """A 2-level AutoencoderKL (VAE scale factor 2, 4 latent channels)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        force_upcast=force_upcast,
    )


def tiny_unet(kind: Kind, resolution: int, in_channels: int):
    """A 2-level UNet2DConditionModel; attention only on the low-resolution level (cheap at 128 px)."""
    from diffusers import UNet2DConditionModel

    common = dict(
        sample_size=resolution // 2,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
    )
    if kind == "sd15":
        return UNet2DConditionModel(**common, cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8)
    return UNet2DConditionModel(
        **common,
        cross_attention_dim=2 * TEXT_HIDDEN,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_HIDDEN,
    )


def _scheduler(kind: Kind, instruct: bool):
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler

    betas = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    if kind == "sdxl":
        return EulerDiscreteScheduler(**betas, timestep_spacing="leading", steps_offset=1)
    if instruct:
        return EulerAncestralDiscreteScheduler(**betas)
    return PNDMScheduler(**betas, skip_prk_steps=True, steps_offset=1)


def build_tiny_pipeline(kind: Kind = "sd15", resolution: int = 64, instruct: bool = True, seed: int = 0):
    """An in-memory tiny pipeline: InstructPix2Pix (8-channel UNet) or, with ``instruct=False``, the base
    text-to-image pipeline (4-channel UNet) that the trainer widens, like a real SD1.5/SDXL checkpoint."""
    import tempfile

    import diffusers
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = offline_clip_tokenizer(tmp)
    text_encoder = CLIPTextModel(tiny_text_config(tokenizer))
    unet = tiny_unet(kind, resolution, 8 if instruct else 4)
    parts = dict(vae=tiny_vae(force_upcast=kind == "sdxl"), text_encoder=text_encoder, tokenizer=tokenizer)
    parts.update(unet=unet, scheduler=_scheduler(kind, instruct))
    if kind == "sd15":
        cls = (
            diffusers.StableDiffusionInstructPix2PixPipeline
            if instruct
            else diffusers.StableDiffusionPipeline
        )
        return cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    parts.update(
        text_encoder_2=CLIPTextModelWithProjection(tiny_text_config(tokenizer, projection=True)),
        tokenizer_2=tokenizer,
    )
    if instruct:
        return diffusers.StableDiffusionXLInstructPix2PixPipeline(
            **parts, add_watermarker=False, is_cosxl_edit=False
        )
    return diffusers.StableDiffusionXLPipeline(**parts, add_watermarker=False)


def save_tiny_pipeline(
    out_dir: str | os.PathLike,
    kind: Kind = "sd15",
    resolution: int = 64,
    instruct: bool = True,
    seed: int = 0,
) -> Path:
    """Build a tiny random pipeline and ``save_pretrained`` it to ``out_dir`` (a diffusers folder)."""
    out = Path(out_dir)
    build_tiny_pipeline(kind, resolution, instruct, seed).save_pretrained(out)
    return out


def write_triplet_fixture(
    root: str | os.PathLike,
    n_images: int = 4,
    size: int = 64,
    n_shards: int = 2,
    splits: tuple[str, ...] = ("train",),
) -> dict[str, list[str] | str]:
    """Hand-made upstream tables for ``n_images`` rendered scenes (selection, pairs and captions per shard).

    The target is a scene lit from the left; the degraded input is the same scene lit flat and darker;
    the instruction says where the light comes from. Images are assigned to ``splits`` round-robin.
    Returns the paths as the dataset export takes them.
    """
    from relightflow.images import save_image
    from relightflow.manifest import write_table
    from relightflow.testing import Scene, render_scene

    root = Path(root)
    selection, pairs, captions = [], [[] for _ in range(n_shards)], [[] for _ in range(n_shards)]
    sides = ("left", "right")
    for i in range(n_images):
        image_id, side = f"img{i:04d}", sides[i % 2]
        target, _, _ = render_scene(Scene(horizontal=side, vertical="above", size=size, seed=i))
        degraded, _, _ = render_scene(
            Scene(horizontal="front", exposure=0.55, ambient=0.6, size=size, seed=i)
        )
        tpath, ipath = root / "images" / f"{image_id}.png", root / "pairs" / f"{image_id}_0.png"
        save_image(tpath, target)
        save_image(ipath, degraded)
        split = splits[i % len(splits)]
        selection.append(dict(image_id=image_id, path=str(tpath), lighting_score=1.0 - i / 100, split=split))
        pairs[i % n_shards].append(
            dict(
                image_id=image_id,
                variant=0,
                input_path=str(ipath),
                target_path=str(tpath),
                mask_path=None,
                albedo_path=None,
                degradation="flat",
                degradation_params=json.dumps({"exposure": 0.55}),
                seed=i,
                split=split,
            )  # fmt: skip
        )
        captions[i % n_shards].append(
            dict(
                image_id=image_id,
                instruction=f"soft light from the {side}, neutral tone",
                source="measured",
                light_direction=side,
                color_temperature="neutral",
            )  # fmt: skip
        )
    out: dict[str, list[str] | str] = {
        "selection": str(root / "selection.parquet"),
        "pairs": [],
        "captions": [],
    }
    write_table(out["selection"], selection)
    for s in range(n_shards):
        out["pairs"].append(str(root / "pairs" / f"{s:05d}.parquet"))
        out["captions"].append(str(root / "captions" / f"{s:05d}.parquet"))
        write_table(out["pairs"][-1], pairs[s], columns=["image_id", "variant", "input_path", "target_path"])
        write_table(out["captions"][-1], captions[s], columns=["image_id", "instruction", "source"])
    return out


def export_fixture_split(root: str | os.PathLike, n_images: int = 4, resolution: int = 64) -> Path:
    """Export a ``train`` split of ``n_images`` rendered triplets to ``root/dataset`` (tests, benchmarks)."""
    from relightflow.dataset import export_split

    root = Path(root)
    up = write_triplet_fixture(root / "upstream", n_images=n_images, size=resolution)
    out = root / "dataset"
    export_split(
        "train", up["selection"], up["pairs"], up["captions"], out, root / "stats.json", root / "rejects.parquet",
        {"resolution": resolution},
    )  # fmt: skip
    return out


def overfit_config(pretrained: str | os.PathLike, kind: Kind = "sd15", resolution: int = 64, **overrides):
    """Training settings that overfit a handful of images in a few steps on a CPU (tests, demo, benchmarks)."""
    from relightflow.train.config import TrainConfig

    base = dict(
        model=kind, pretrained=str(pretrained), resolution=resolution, batch_size=4, gradient_accumulation_steps=1,
        max_steps=12, learning_rate=1e-3, lr_scheduler="constant_with_warmup", lr_warmup_steps=1,
        conditioning_dropout_prob=0.0, mixed_precision="no", gradient_checkpointing=False, ema_decay=0.8,
        random_flip=False, checkpointing_steps=6, checkpoints_total_limit=1, validation_steps=12,
        num_validation_images=2, validation_inference_steps=2, report_to="none", seed=0,
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})
