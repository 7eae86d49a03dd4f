"""The Flux Kontext LoRA family on a tiny random Kontext pipeline (CPU, 64 px, seconds): it learns, saves
LoRA-only checkpoints, resumes exactly, and its model folder runs through the inference module."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relightflow import inference
from relightflow.testing.tiny_flux import save_tiny_flux_kontext
from relightflow.testing.tiny_sd import export_fixture_split
from relightflow.train import flux_kontext as fk
from relightflow.train.checkpoints import checkpoints, read_state
from relightflow.train.config import TrainConfig, TrainPaths
from relightflow.train.launch import train


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flux")
    return {
        "root": root,
        "base": save_tiny_flux_kontext(root / "base"),
        "train": export_fixture_split(root / "data", n_images=4, resolution=64),
    }


def config(base: Path, **overrides) -> TrainConfig:
    flux = dict(max_sequence_length=16, validation_inference_steps=2, dataloader_num_workers=0)
    cfg = dict(
        model="flux-kontext",
        pretrained=str(base),
        resolution=64,
        batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=20,
        learning_rate=2e-2,
        lr_scheduler="constant",
        lr_warmup_steps=0,
        mixed_precision="no",
        gradient_checkpointing=True,
        checkpointing_steps=5,
        checkpoints_total_limit=2,
        validation_steps=10,
        num_validation_images=2,
        validation_loss_samples=4,
        lora_rank=4,
        seed=0,
        report_to="none",
        use_ema=True,
    )
    # use_ema is an SD setting: ignored here
    return TrainConfig(**{**cfg, **overrides, "flux": {**flux, **overrides.get("flux", {})}})


def paths(work: dict, name: str) -> TrainPaths:
    root = work["root"] / name
    return TrainPaths(
        train_data=str(work["train"]), output_dir=str(root / "model"), work_dir=str(root / "work")
    )


@pytest.fixture(scope="module")
def trained(work) -> TrainPaths:
    p = paths(work, "trained")
    train(config(work["base"]), p)
    return p


def test_lora_steps_lower_the_loss_on_an_overfit_set(trained: TrainPaths, work) -> None:
    s = json.loads(trained.summary.read_text())
    assert s["model"] == "flux-kontext" and s["steps"] == 20
    assert [step for step, _ in s["val_losses"]] == [0, 10, 20]
    assert s["val_loss_final"] < 0.9 * s["val_loss_initial"] and s["loss_last"] < s["loss_first"]
    settings = inference.read_settings(trained.output_dir)
    assert (settings.family, settings.lora_weights, settings.guidance_scale) == (
        "flux-kontext",
        fk.LORA_WEIGHTS,
        2.5,
    )
    assert settings.base_model == str(work["base"].resolve()) and settings.lora_rank == 4
    assert "base_model:" in (Path(trained.output_dir) / "README.md").read_text()
    grid = np.asarray(Image.open(trained.validation / "step-0000020.png"))
    assert grid.shape == (2 * 64, 3 * 64, 3)  # 2 rows of input | output | target
    assert trained.loss_curve.exists()


def test_checkpoints_hold_the_lora_only_and_are_rotated(trained: TrainPaths) -> None:
    found = checkpoints(trained.checkpoints)
    assert [s for s, _ in found] == [15, 20]
    assert not (found[-1][1] / "model.safetensors").exists()  # never the frozen base weights
    assert (found[-1][1] / fk.LORA_WEIGHTS).exists() and read_state(found[-1][1]).step == 20


def test_resume_continues_exactly(work, caplog) -> None:
    cfg = dict(
        checkpointing_steps=1, validation_steps=100, num_validation_images=0, validation_loss_samples=0
    )
    straight = paths(work, "straight")
    train(config(work["base"], max_steps=4, **cfg), straight)
    resumed = paths(work, "resumed")
    train(config(work["base"], max_steps=3, **cfg), resumed)
    with caplog.at_level(logging.INFO, logger="relightflow"):
        train(config(work["base"], max_steps=4, **cfg), resumed)
    assert "resumed from" in caplog.text and "(step 3)" in caplog.text  # mid-epoch: 2 batches per epoch
    assert json.loads(resumed.summary.read_text())["resumed_from"] == 3
    la, lb = (read_state(checkpoints(p.checkpoints)[-1][1]).losses for p in (straight, resumed))
    assert [s for s, _ in lb] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in lb], [v for _, v in la], rtol=1e-5)
    wa, wb = (load_lora(Path(p.output_dir)) for p in (straight, resumed))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def load_lora(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / fk.LORA_WEIGHTS))


def test_the_lora_folder_runs_through_the_inference_module(trained: TrainPaths, work) -> None:
    image = np.asarray(Image.open(trained.validation / "step-0000020.png"))[:64, :64]
    prompt = "soft light from the left, neutral tone"
    tuned = inference.load(trained.output_dir, "cpu")
    base = inference.load(
        work["base"], "cpu", {"num_inference_steps": 2, "guidance_scale": 2.5, "resolution": 64}
    )
    out, plain = tuned(image, prompt), base(image, prompt)
    assert out.shape == image.shape and np.abs(out.astype(float) - plain).mean() > 1.0  # the LoRA acts
    fp8 = inference.load(trained.output_dir, "cpu", fp8=True)
    to_q = fp8.pipe.transformer.transformer_blocks[0].attn.to_q
    assert to_q.base_layer.weight.dtype == torch.float8_e4m3fn
    assert {p.dtype for n, p in to_q.named_parameters() if "lora_" in n} == {torch.float32}
    assert (
        np.abs(fp8(image, prompt).astype(float) - out).mean()
        < 0.25 * np.abs(out.astype(float) - plain).mean()
    )


def test_live_text_encoders_fp8_base_and_gradient_accumulation(work) -> None:
    p = paths(work, "live")
    cfg = config(
        work["base"],
        max_steps=2,
        gradient_accumulation_steps=2,
        gradient_checkpointing=False,
        validation_steps=1,
        num_validation_images=1,
        flux=dict(precompute_text_embeddings=False, fp8_base_weights=True),
    )
    trainer = fk.FluxKontextTrainer(cfg, p)
    trainer.setup()
    to_q = trainer.accelerator.unwrap_model(trainer.model).transformer_blocks[0].attn.to_q
    assert (
        to_q.base_layer.weight.dtype == torch.float8_e4m3fn
        and to_q.lora_A["default"].weight.dtype == torch.float32
    )
    trainer.train()
    s = json.loads(p.summary.read_text())
    assert s["steps"] == 2 and np.isfinite(s["loss_last"]) and (p.validation / "step-0000001.png").exists()
    assert not (Path(p.work_dir) / "text_embeddings").exists()
    assert (
        load_lora(Path(p.output_dir))["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"].abs().sum()
        > 0
    )


def test_prompt_cache_equals_live_encoding_and_is_reused(work, tmp_path) -> None:
    pipe = fk.load_text_pipeline(str(work["base"]), torch.float32, "cpu")
    prompts = ["soft light from the left", "warm light from above", ""]
    fk.PromptCache.build(tmp_path, pipe, prompts, str(work["base"]), 16, "cpu", torch.float32)
    cache = fk.PromptCache(tmp_path, torch.float32)
    embeds, pooled = cache(prompts[::-1])
    live_embeds, live_pooled = fk.encode_prompts(pipe, prompts[::-1], 16, "cpu")
    torch.testing.assert_close(embeds, live_embeds, rtol=0, atol=0)
    torch.testing.assert_close(pooled, live_pooled, rtol=0, atol=0)
    mtime = (tmp_path / "embeds.npy").stat().st_mtime_ns
    fk.PromptCache.build(tmp_path, pipe, prompts, str(work["base"]), 16, "cpu", torch.float32)
    assert (tmp_path / "embeds.npy").stat().st_mtime_ns == mtime
    bf16 = fk._from_bits(fk._to_bits(live_pooled.to(torch.bfloat16)), torch.bfloat16)
    torch.testing.assert_close(bf16, live_pooled.to(torch.bfloat16), rtol=0, atol=0)


def test_flux_settings_replace_the_shared_ones(work) -> None:
    eff = config(work["base"], lora_rank=0, guidance_scale=7.5, flux=dict(guidance_scale=1.0)).effective()
    assert eff.lora_rank == 16 and eff.guidance_scale == 1.0 and eff.validation_inference_steps == 2
    with pytest.raises(ValueError, match="max_sequence_length"):
        config(work["base"], flux=dict(max_sequence_length=1000))
