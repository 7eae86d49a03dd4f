"""The ``relightflow`` command: relight images, train outside Snakemake, make demo data and tiny models."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def _relight(args: argparse.Namespace) -> int:
    from relightflow.inference import load
    from relightflow.relight import relight, relight_manifest

    if not args.manifest and not (args.input and args.prompt):
        raise SystemExit("relight needs --input and --prompt, or --manifest")
    overrides = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                     image_guidance_scale=args.image_guidance_scale, resolution=args.resolution or None,
                     precision=args.precision)  # fmt: skip
    relighter = load(args.model, args.device, overrides, seed=args.seed, keep_model_size=args.keep_model_size,
                     base_model=args.base_model, fp8=args.fp8, cpu_offload=args.cpu_offload)  # fmt: skip
    if args.resolution == 0:  # the input's own size
        relighter.settings = relighter.settings.model_copy(update={"resolution": None})
    if args.manifest:
        results = relight_manifest(relighter, args.manifest, args.output)
    else:
        results = relight(relighter, args.input, args.prompt, args.output)
    failed = [r for r in results if r["error"]]
    print(f"relit {len(results) - len(failed)} image(s) into {args.output}; {len(failed)} failed")
    return 1 if failed and len(failed) == len(results) else 0


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _train(args: argparse.Namespace) -> int:
    import yaml

    from relightflow.train.launch import launch

    cfg = dict((yaml.safe_load(Path(args.config).read_text()) or {}).get("train", {})) if args.config else {}
    for item in args.set or []:
        key, _, value = item.partition("=")
        cfg[key.strip()] = _parse_value(value)
    launch(cfg, args.train_data, args.output, args.work_dir, val_data=args.val_data, latents=args.latents)
    print(f"pipeline saved to {args.output}")
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from relightflow.demo import materialize

    paths = materialize(args.root)
    print(f"{len(paths)} demo images under {args.root}")
    return 0


def _config(args: argparse.Namespace) -> int:
    from relightflow import config

    text = config.render_yaml()
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
        print(f"wrote every setting with its default to {args.write}")
    else:
        sys.stdout.write(text)
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from relightflow.testing.tiny_sd import save_tiny_pipeline

    out = save_tiny_pipeline(args.output, args.kind, args.resolution, instruct=not args.base, seed=args.seed)
    print(f"tiny {args.kind} pipeline saved to {out}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relightflow", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("relight", help="relight an image, a folder or a manifest with a trained model")
    r.add_argument("--model", required=True, help="trained pipeline folder (results/train/model)")
    r.add_argument("--input", help="an image or a folder of images")
    r.add_argument("--prompt", help="the lighting instruction")
    r.add_argument("--manifest", help="Parquet/CSV with input_path|path and instruction|edit_prompt columns")
    r.add_argument("--output", default="relit", help="output folder (default: relit)")
    saved = " (default: the model's saved setting)"
    r.add_argument("--steps", type=int, help="denoising steps" + saved)
    r.add_argument("--guidance-scale", type=float, help="text guidance" + saved)
    r.add_argument("--image-guidance-scale", type=float, help="image guidance (InstructPix2Pix)" + saved)
    r.add_argument(
        "--seed", type=int, default=0, help="noise seed (each image's noise also depends on its pixels)"
    )
    r.add_argument("--resolution", type=int, help="shorter side at inference, 0: the input's size" + saved)
    r.add_argument(
        "--keep-model-size", action="store_true", help="don't resize outputs back to the input size"
    )
    r.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    r.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], help="weights dtype" + saved)
    r.add_argument("--base-model", help="Flux Kontext LoRA: base pipeline instead of the saved one")
    r.add_argument("--fp8", action="store_true", help="Flux Kontext LoRA: float8 transformer weights")
    r.add_argument("--cpu-offload", nargs="?", const="model", choices=["model", "sequential"],
                   help="Flux Kontext LoRA: keep one model (or one layer) on the GPU at a time")  # fmt: skip
    r.set_defaults(func=_relight)

    t = sub.add_parser("train", help="train on exported splits with accelerate (resumes from checkpoints)")
    t.add_argument("--config", help="config.yaml whose train: section is used")
    t.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a train setting (repeatable)"
    )
    t.add_argument("--train-data", required=True, help="exported train split (results/dataset/train)")
    t.add_argument("--val-data", help="exported val split for validation grids")
    t.add_argument("--latents", help="cached latents of the train split")
    t.add_argument("--output", required=True, help="folder of the final pipeline")
    t.add_argument("--work-dir", required=True, help="checkpoints, logs, validation grids")
    t.set_defaults(func=_train)

    d = sub.add_parser("demo-data", help="write the offline demo images")
    d.add_argument("root", help="folder to write them to")
    d.set_defaults(func=_demo_data)

    c = sub.add_parser("config", help="print (or --write) every setting with its default and description")
    c.add_argument("--write", metavar="PATH", help="write the rendered config.yaml to PATH")
    c.set_defaults(func=_config)

    m = sub.add_parser("tiny-model", help="save a tiny random SD1.5/SDXL pipeline (tests, demo)")
    m.add_argument("output")
    m.add_argument("--kind", choices=["sd15", "sdxl"], default="sd15")
    m.add_argument("--resolution", type=int, default=64)
    m.add_argument(
        "--base", action="store_true", help="a text-to-image base (4-channel UNet) instead of IP2P"
    )
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=_tiny_model)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
