"""A tiny random Qwen3-VL (model + processor + offline tokenizer) saved like a real checkpoint.

Tests load it with the same ``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained`` code as
``Qwen/Qwen3-VL-2B-Instruct``. The tokenizer is a byte-level BPE trained in memory on the prompt and a
few descriptions (nothing is downloaded). ``teach_reply`` overfits the model to answer one fixed reply,
so the success path (decode only new tokens → parse → validate) is exercised with a real generate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from relightflow.captions.schema import SYSTEM_PROMPT, USER_PROMPT

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)


def _tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tk.train_from_iterator(corpus, trainer)
    return Qwen2TokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              chat_template=CHAT_TEMPLATE)  # fmt: skip


def _processor(tokenizer):
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    size = {"shortest_edge": 32 * 32, "longest_edge": 128 * 128}
    common = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "size": size}
    image_proc = Qwen2VLImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3, **common)
    video_proc = Qwen3VLVideoProcessor(**common)
    return Qwen3VLProcessor(image_processor=image_proc, tokenizer=tokenizer, video_processor=video_proc,
                            chat_template=CHAT_TEMPLATE)  # fmt: skip


def _model(tokenizer, seed: int):
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}  # fmt: skip
    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "eos_token_id": eos,
            "pad_token_id": pad, "bos_token_id": pad,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3],
                                "mrope_interleaved": True}}  # fmt: skip
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64,
              "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, vision_config=vision, **ids))
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    return model


def teach_reply(
    model, processor, images: list[np.ndarray], reply: str, steps: int = 100, lr: float = 1e-2
) -> float:
    """Overfit ``model`` to answer ``reply`` to the caption prompt for these images; returns the final loss."""
    import torch

    from relightflow.captions.providers.hf_local import hf_messages

    processor.tokenizer.padding_side = "left"
    prompt = processor.apply_chat_template([hf_messages(im) for im in images], tokenize=True,
                                           add_generation_prompt=True, return_dict=True, return_tensors="pt",
                                           padding=True)  # fmt: skip
    target = processor.tokenizer(reply + "<|im_end|>", return_tensors="pt", add_special_tokens=False)[
        "input_ids"
    ]
    target = target.repeat(len(images), 1)
    n_prompt = prompt["input_ids"].shape[1]
    batch = {}
    for key, value in prompt.items():  # extend every per-token tensor (ids, mask, token types) by the target
        if key == "input_ids":
            value = torch.cat([value, target], dim=1)
        elif torch.is_tensor(value) and value.ndim == 2 and value.shape == prompt["input_ids"].shape:
            fill = torch.ones_like(target) if key == "attention_mask" else torch.zeros_like(target)
            value = torch.cat([value, fill.to(value.dtype)], dim=1)
        batch[key] = value
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, n_prompt:] = target
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def build_tiny_qwen3vl(path: str | os.PathLike, reply: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """Save a tiny random Qwen3-VL checkpoint folder (optionally taught to answer ``reply`` as JSON)."""
    from relightflow.testing import render_scene

    examples = [json.dumps(reply)] if reply else []
    corpus = [SYSTEM_PROMPT, USER_PROMPT, *examples, '{"light_source": "sunlight", "direction": "left"}'] * 4
    tokenizer = _tokenizer(corpus)
    path = Path(path)
    _model(tokenizer, seed).save_pretrained(path)
    _processor(tokenizer).save_pretrained(path)
    if reply:  # teach through the reloaded processor: a saved tokenizer may split text differently
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path)
        images = [render_scene(size=64, seed=i)[0] for i in range(2)]
        teach_reply(model, processor, images, json.dumps(reply))
        model.save_pretrained(path)
    return path
