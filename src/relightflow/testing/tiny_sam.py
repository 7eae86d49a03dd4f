"""Tiny random models for tests and offline demos, saved in the same formats as the real checkpoints so
they load through the same code (``load_sam2``, ``load_sam3``, ``MarigoldAlbedo``). Their outputs are
meaningless; they exercise shapes, prompts, loading and post-processing."""

from __future__ import annotations

import json
import os
from pathlib import Path

from relightflow.testing.tiny_sd import bytes_to_unicode

SAM2_TEST_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def tiny_clip_tokenizer(
    folder: str | os.PathLike, words: tuple[str, ...] = ("person", "face"), max_length: int = 32
):
    """A CLIP BPE tokenizer with a ~520-token vocabulary (bytes + merges spelling ``words``), offline."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in words:
        left = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append((left, right))
            left = left + right
            vocab.append(left)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab = list(dict.fromkeys(vocab))
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in dict.fromkeys(merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )


def build_tiny_sam3(folder: str | os.PathLike) -> str:
    """Save a ~0.3M-parameter ``Sam3Model`` + ``Sam3Processor`` (224 px) to ``folder``; return the folder."""
    import torch
    from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor
    from transformers.models.sam3.configuration_sam3 import (
        Sam3DETRDecoderConfig,
        Sam3DETREncoderConfig,
        Sam3GeometryEncoderConfig,
        Sam3MaskDecoderConfig,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )

    folder = Path(folder)
    tok = tiny_clip_tokenizer(folder / "tokenizer_src")
    small = {"num_attention_heads": 4, "intermediate_size": 64}
    backbone = Sam3ViTConfig(hidden_size=32, num_hidden_layers=2, image_size=224, patch_size=14, window_size=8,
                             global_attn_indexes=[0, 1], **small)  # fmt: skip
    config = Sam3Config(
        vision_config=Sam3VisionConfig(
            backbone_config=backbone, fpn_hidden_size=32, scale_factors=[2.0, 1.0]
        ),
        text_config={
            "vocab_size": 1000,
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 32,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },  # fmt: skip
        geometry_encoder_config=Sam3GeometryEncoderConfig(
            hidden_size=32, num_layers=1, mask_fuser_hidden_size=32, mask_fuser_num_layers=1, **small
        ),
        detr_encoder_config=Sam3DETREncoderConfig(hidden_size=32, num_layers=1, **small),
        detr_decoder_config=Sam3DETRDecoderConfig(hidden_size=32, num_layers=1, num_queries=5, **small),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=32, num_upsampling_stages=2),
    )
    torch.manual_seed(0)
    Sam3Model(config).save_pretrained(folder)
    image_processor = Sam3ImageProcessor(
        size={"height": 224, "width": 224}, mask_size={"height": 64, "width": 64}
    )
    Sam3Processor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    return str(folder)


def build_tiny_sam2_checkpoint(
    path: str | os.PathLike, config: str = SAM2_TEST_CONFIG, image_size: int = 256
) -> str:
    """Random SAM2 weights from a bundled config, saved like Meta's checkpoints (``{"model": state_dict}``)."""
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(config, None, device="cpu", hydra_overrides_extra=[f"++model.image_size={image_size}"])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def build_tiny_marigold(
    folder: str | os.PathLike, targets: tuple[str, ...] = ("albedo", "shading", "residual")
) -> str:
    """Save a tiny random ``MarigoldIntrinsicsPipeline`` (lighting-checkpoint layout: albedo in linear space,
    64 px processing, 1 step) to ``folder``; return the folder."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldIntrinsicsPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    tok = tiny_clip_tokenizer(folder / "tokenizer_src", max_length=16)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
    )  # fmt: skip
    n = len(targets)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4 * (1 + n), out_channels=4 * n, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    )  # fmt: skip
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    )
    props = {"target_names": list(targets)}
    props |= {
        t: {"prediction_space": "linear" if t == "albedo" else "srgb", "up_to_scale": False} for t in targets
    }
    pipe = MarigoldIntrinsicsPipeline(
        unet=unet, vae=vae, scheduler=DDIMScheduler(prediction_type="v_prediction"), text_encoder=text,
        tokenizer=tok, prediction_type="intrinsics", target_properties=props, default_denoising_steps=1,
        default_processing_resolution=64,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return str(folder)
