"""A tiny random ``FluxKontextPipeline`` built offline, for tests, benchmarks and the demo.

Same layout as FLUX.1-Kontext-dev (CLIP + T5 text encoders, 16x packed latents, guidance embedding,
flow-matching scheduler), only a few thousand parameters. It is saved with ``save_pretrained`` and loaded
back with ``FluxKontextPipeline.from_pretrained`` like a real checkpoint. The CLIP tokenizer is rebuilt from
open_clip's bundled BPE; the T5 tokenizer is a tokenizers-backed Unigram whose vocabulary (single characters
plus a few words) covers any lowercase ASCII text without the hub or sentencepiece.
"""

from __future__ import annotations

import os
import string
import tempfile
from pathlib import Path

TEXT_HIDDEN = 32  # hidden size of both tiny text encoders (= joint_attention_dim / pooled_projection_dim)
T5_WORDS = (
    "make",
    "light",
    "lighting",
    "from",
    "the",
    "left",
    "right",
    "above",
    "below",
    "warm",
    "cool",
    "soft",
)


def t5_tokenizer():
    """A T5 tokenizer from an in-memory Unigram vocabulary (no sentencepiece model, no hub)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -1.0) for w in T5_WORDS]
    pieces += [(c, -5.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_components(seed: int = 0) -> dict:
    """The modules of a tiny Kontext pipeline (random weights, seeded)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from relightflow.testing.tiny_sd import offline_clip_tokenizer, tiny_text_config

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        clip_tok = offline_clip_tokenizer(tmp, max_merges=1000)
    t5_tok = t5_tokenizer()
    clip = CLIPTextModel(tiny_text_config(clip_tok))
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=TEXT_HIDDEN,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=t5_tok.pad_token_id,
            eos_token_id=t5_tok.eos_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),  # VAE scale factor 2: 64 px -> 32x32 latents -> 256 packed tokens
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x 2x2 packing
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,
        pooled_projection_dim=TEXT_HIDDEN,
        guidance_embeds=True,  # like FLUX.1-Kontext-dev (guidance-distilled)
        axes_dims_rope=(4, 4, 8),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256)
    return dict(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


def build_tiny_flux_kontext(seed: int = 0):
    """An in-memory tiny ``FluxKontextPipeline``."""
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(**tiny_components(seed))


def save_tiny_flux_kontext(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Build a tiny random Kontext pipeline and ``save_pretrained`` it to ``out_dir``."""
    out = Path(out_dir)
    build_tiny_flux_kontext(seed).save_pretrained(out)
    return out
