"""Parse-time helpers for the Snakefile: input listing, shard planning, paths.

``plan`` runs when Snakemake parses the workflow. On the submitting host it lists the input and
updates the cached shard assignment; inside a cluster job (which parses the workflow again) it only
reads the cached shard list, so 1,000 jobs don't each rescan 70k files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from relightflow import ingest

log = logging.getLogger(__name__)

STATE_DIR = "results/ingest/state"


def input_root(config: dict[str, Any]) -> str:
    """The folder image paths are relative to."""
    inp = config["input"]
    if inp.get("list"):
        return str(inp.get("list_root") or Path(inp["list"]).parent)
    return str(inp["root"])


def list_input(config: dict[str, Any]) -> list[ingest.Entry]:
    inp = config["input"]
    if inp.get("list"):
        return ingest.scan_list(inp["list"], input_root(config), inp.get("list_column", "path"))
    return ingest.scan_folder(inp["root"], inp["extensions"])


def is_remote_job(workflow: Any) -> bool:
    """True inside a job spawned by Snakemake (cluster jobstep or subprocess), not on the main host."""
    return bool(getattr(workflow, "remote_exec", False) or getattr(workflow, "subprocess_exec", False))


def maybe_materialize_demo(config: dict[str, Any]) -> None:
    """Create the demo images and the tiny base diffusion model when the demo config asks for them."""
    demo = config.get("demo") or {}
    if demo.get("materialize") and not config["input"].get("list"):
        from relightflow.demo import materialize

        materialize(config["input"]["root"], **(demo.get("options") or {}))
    base = demo.get("base_model")
    if base and not (Path(base) / "model_index.json").exists():
        from relightflow.demo import write_base_model

        write_base_model(base)


def plan(config: dict[str, Any], remote: bool = False, state_dir: str = STATE_DIR) -> list[str]:
    """Shard ids for this run (listing the input and writing per-shard list files unless ``remote``)."""
    if remote:
        shards = ingest.cached_shards(state_dir)
        if shards:
            return shards
    maybe_materialize_demo(config)
    entries = list_input(config)
    if not entries:
        src = config["input"].get("list") or config["input"]["root"]
        raise ValueError(f"no input images found in {src} (extensions {config['input']['extensions']})")
    shards = ingest.plan_shards(entries, int(config["shards"]["size"]), state_dir)
    log.info("%d images in %d shards", len(entries), len(shards))
    return shards


def shard_list_path(shard: str, state_dir: str = STATE_DIR) -> str:
    return os.path.join(state_dir, "lists", f"{shard}.jsonl")


def enabled_stages(config: dict[str, Any]) -> list[str]:
    """Stages that ``rule all`` builds (config ``stages``; default: all)."""
    return list(
        config.get("stages") or ["ingest", "filter", "pairs", "captions", "dataset", "train", "evaluate"]
    )
