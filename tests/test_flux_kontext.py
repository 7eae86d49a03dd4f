"""FLUX.1 Kontext LoRA training and inference on a tiny random Kontext pipeline (CPU, 64 px, seconds)."""

from __future__ import annotations

import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")
pytest.importorskip("peft")

from PIL import Image  # noqa: E402

from relightflow.testing import Scene, render_scene  # noqa: E402
from relightflow.testing.tiny_flux import save_tiny_flux_kontext  # noqa: E402
from relightflow.train import flux_kontext as fk  # noqa: E402

FEATURES = {"input_image": "image", "edit_prompt": "string", "edited_image": "image"}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def write_dataset(folder, n: int = 4, size: int = 64) -> str:
    """A relighting split: a flat, dim render as input, the same scene lit from one side as target."""
    rows: dict[str, list] = {"input_image": [], "edit_prompt": [], "edited_image": []}
    for i in range(n):
        side = ("left", "right")[i % 2]
        target, _, _ = render_scene(Scene(horizontal=side, vertical="above", size=size, seed=i))
        degraded, _, _ = render_scene(
            Scene(horizontal="front", exposure=0.55, ambient=0.6, size=size, seed=i)
        )
        rows["input_image"].append(Image.fromarray(degraded))
        rows["edited_image"].append(Image.fromarray(target))
        rows["edit_prompt"].append(f"soft light from the {side}")
    features = datasets.Features(
        {k: datasets.Image() if v == "image" else datasets.Value(v) for k, v in FEATURES.items()}
    )
    folder.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / "part-00000.parquet"))
    return str(folder)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    return {
        "root": root,
        "base": str(save_tiny_flux_kontext(root / "base")),
        "train": write_dataset(root / "train"),
    }


def config(base: str, **overrides) -> dict:
    cfg = dict(
        model="flux-kontext",
        pretrained=base,
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
        lora_rank=4,
        use_ema=True,  # an SD-only key: ignored here
        seed=0,
        max_grad_norm=1.0,
        flux=dict(max_sequence_length=16, validation_inference_steps=2, dataloader_num_workers=0),
    )
    flux = {**cfg["flux"], **overrides.pop("flux", {})}
    return {**cfg, **overrides, "flux": flux}


@pytest.fixture(scope="module")
def trained(work):
    out = fk.train_flux_kontext(work["train"], None, str(work["root"] / "model"), config(work["base"]))
    return out


def lora_tensors(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / fk.LORA_WEIGHTS))


def kontext_image(pipe, image: Image.Image, prompt: str = "soft light from the left") -> np.ndarray:
    return pipe(
        image=image,
        prompt=prompt,
        height=64,
        width=64,
        max_area=64 * 64,
        _auto_resize=False,
        num_inference_steps=2,
        max_sequence_length=16,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]


def test_lora_steps_lower_the_loss_on_an_overfit_set(trained):
    metrics = json.loads((trained / "training_metrics.json").read_text())
    assert metrics["steps"] == 20
    assert metrics["val_loss_final"] < 0.9 * metrics["val_loss_initial"]
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert [s for s, _ in metrics["val_losses"]] == [0, 10, 20]
    info = json.loads((trained / fk.MODEL_INFO).read_text())
    assert info["kind"] == fk.KIND and info["lora_rank"] == 4 and info["steps"] == 20
    assert "base_model:" in (trained / "README.md").read_text()
    grid = np.asarray(Image.open(trained / "validation" / "step-000020.png"))
    assert grid.shape == (2 * 64, 3 * 64, 3)  # 2 rows of input | output | target


def test_checkpoints_are_rotated(trained):
    ckpts = fk.list_checkpoints(trained.with_name(trained.name + ".checkpoints"))
    assert [p.name for p in ckpts] == ["checkpoint-15", "checkpoint-20"]
    assert not (ckpts[-1] / "model.safetensors").exists()  # LoRA only, never the frozen base weights
    assert (ckpts[-1] / fk.LORA_WEIGHTS).exists()


def test_resume_continues_from_the_checkpoint_step(work, tmp_path, caplog):
    cfg = dict(checkpointing_steps=1, validation_steps=100, num_validation_images=0)
    straight = fk.train_flux_kontext(
        work["train"], None, str(tmp_path / "a"), config(work["base"], max_steps=4, **cfg)
    )
    fk.train_flux_kontext(work["train"], None, str(tmp_path / "b"), config(work["base"], max_steps=3, **cfg))
    with caplog.at_level(logging.INFO, logger="relightflow"):
        resumed = fk.train_flux_kontext(
            work["train"], None, str(tmp_path / "b"), config(work["base"], max_steps=4, **cfg)
        )
    assert "resumed from" in caplog.text and "(step 3)" in caplog.text  # mid-epoch: 2 batches per epoch
    state_a = json.loads((tmp_path / "a.checkpoints" / "checkpoint-4" / fk.TRAINER_STATE).read_text())
    state_b = json.loads((tmp_path / "b.checkpoints" / "checkpoint-4" / fk.TRAINER_STATE).read_text())
    assert [s for s, _ in state_b["losses"]] == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [v for _, v in state_b["losses"]], [v for _, v in state_a["losses"]], rtol=1e-5
    )
    a, b = lora_tensors(straight), lora_tensors(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_saved_lora_loads_into_a_fresh_pipeline_and_changes_its_output(trained, work):
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(work["base"], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(trained / "validation" / "step-000020.png").crop((0, 0, 64, 64))
    before = kontext_image(pipe, image)
    pipe.load_lora_weights(str(trained), weight_name=fk.LORA_WEIGHTS)
    with_lora = kontext_image(pipe, image)
    pipe.unload_lora_weights()
    after_unload = kontext_image(pipe, image)
    assert np.abs(with_lora - before).mean() > 0.01
    np.testing.assert_allclose(after_unload, before, atol=1e-5)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())


def test_load_relighter_returns_the_input_size_and_applies_the_lora(trained, work):
    assert fk.is_flux_kontext_model(trained) and not fk.is_flux_kontext_model(work["base"])
    relight = fk.load_relighter(trained, device="cpu")
    image = Image.fromarray(render_scene(Scene(size=80, seed=7))[0]).resize((80, 60))
    prompt = "soft light from the right"
    out = relight(image, prompt, num_inference_steps=2)
    plain = relight(image, prompt, num_inference_steps=2, lora_scale=0.0)
    assert out.size == image.size and out.mode == "RGB"
    lora_effect = mean_abs_diff(out, plain)
    assert lora_effect > 2.0
    fp8 = fk.load_relighter(trained, device="cpu", fp8=True)
    assert (
        fp8.pipeline.transformer.transformer_blocks[0].attn.to_q.base_layer.weight.dtype
        == torch.float8_e4m3fn
    )
    assert mean_abs_diff(fp8(image, prompt, num_inference_steps=2), out) < 0.25 * lora_effect


def test_live_text_encoders_fp8_base_and_gradient_accumulation(work, tmp_path):
    cfg = config(
        work["base"],
        max_steps=2,
        gradient_accumulation_steps=2,
        gradient_checkpointing=False,
        validation_steps=1,
        num_validation_images=1,
        flux=dict(precompute_text_embeddings=False, fp8_base_weights=True),
    )
    s = fk.FluxKontextSettings.from_config(cfg)
    trainer = fk.Trainer(s, work["train"], work["train"], tmp_path / "m", tmp_path / "ck")
    to_q = trainer.accelerator.unwrap_model(trainer.transformer).transformer_blocks[0].attn.to_q
    assert to_q.base_layer.weight.dtype == torch.float8_e4m3fn
    assert to_q.lora_A["default"].weight.dtype == torch.float32
    out = trainer.run(work["train"], work["train"])
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert metrics["steps"] == 2 and np.isfinite(metrics["train_loss_last"])
    assert (out / "validation" / "step-000001.png").exists()
    assert not (tmp_path / "ck" / "text_embeddings").exists()
    assert lora_tensors(out)["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"].abs().sum() > 0


def test_prompt_cache_equals_live_encoding_and_is_reused(work, tmp_path):
    s = fk.FluxKontextSettings.from_config(config(work["base"]))
    pipe = fk.load_text_pipeline(work["base"], torch.float32, "cpu")
    prompts = ["soft light from the left", "warm light from above", ""]
    fk.PromptCache.build(tmp_path, pipe, prompts, s, "cpu", torch.float32)
    cache = fk.PromptCache(tmp_path, torch.float32)
    embeds, pooled = cache(prompts[::-1])
    live_embeds, live_pooled = fk.encode_prompts(pipe, prompts[::-1], 16, "cpu")
    torch.testing.assert_close(embeds, live_embeds, rtol=0, atol=0)
    torch.testing.assert_close(pooled, live_pooled, rtol=0, atol=0)
    mtime = (tmp_path / "embeds.npy").stat().st_mtime_ns
    fk.PromptCache.build(tmp_path, pipe, prompts, s, "cpu", torch.float32)
    assert (tmp_path / "embeds.npy").stat().st_mtime_ns == mtime
    bf16 = fk._from_bits(fk._to_bits(live_pooled.to(torch.bfloat16)), torch.bfloat16)
    torch.testing.assert_close(bf16, live_pooled.to(torch.bfloat16), rtol=0, atol=0)


def test_settings_defaults_and_overrides(work):
    s = fk.FluxKontextSettings.from_config(config(work["base"], lora_rank=0, flux=dict(guidance_scale=1.0)))
    assert s.lora_rank == fk.DEFAULT_LORA_RANK and s.alpha == fk.DEFAULT_LORA_RANK
    assert s.guidance_scale == 1.0 and s.target_modules == list(fk.ATTENTION_MODULES)
    with pytest.raises(ValueError, match="max_sequence_length"):
        fk.FluxKontextSettings.from_config(config(work["base"], flux=dict(max_sequence_length=1000)))


def test_resolution_must_fit_the_latent_packing(work, tmp_path):
    with pytest.raises(ValueError, match="multiple of 4"):
        fk.train_flux_kontext(work["train"], None, str(tmp_path / "m"), config(work["base"], resolution=66))


def test_generation_size_keeps_aspect_and_area():
    assert fk.generation_size((1024, 768), 512, 16) == (592, 448)
    assert fk.generation_size((64, 64), 64, 4) == (64, 64)
