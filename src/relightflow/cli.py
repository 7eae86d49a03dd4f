"""The ``relightflow`` command: relight images, train outside Snakemake, make demo data and tiny models."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def _relight(args: argparse.Namespace) -> int:
    from relightflow.relight import RelightSettings, relight, relight_manifest

    settings = RelightSettings(
        num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
        image_guidance_scale=args.image_guidance_scale, seed=args.seed,
        resolution=args.resolution or None, keep_model_size=args.keep_model_size,
    )  # fmt: skip
    common = dict(settings=settings, device=args.device, precision=args.precision)
    if args.manifest:
        results = relight_manifest(args.model, args.manifest, args.output, **common)
    elif args.input and args.prompt:
        results = relight(args.model, args.input, args.prompt, args.output, **common)
    else:
        raise SystemExit("relight needs --input and --prompt, or --manifest")
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
    r.add_argument("--steps", type=int, default=20, help="denoising steps")
    r.add_argument("--guidance-scale", type=float, default=7.5, help="text guidance")
    r.add_argument("--image-guidance-scale", type=float, default=1.5, help="input-image guidance")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--resolution", type=int, default=512, help="shorter side at inference (0: keep)")
    r.add_argument(
        "--keep-model-size", action="store_true", help="don't resize outputs back to the input size"
    )
    r.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    r.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
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
