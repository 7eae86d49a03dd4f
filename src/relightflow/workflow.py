"""Parse-time helpers for the Snakefile: input listing, shard planning, paths.

``plan`` runs when Snakemake parses the workflow and has no other side effect than the shard state:

* inside a job that Snakemake spawned (cluster jobstep), it only reads the cached shard plan, so 1,000
  jobs don't each rescan 70k files;
* while another Snakemake run holds this working directory (a dry run, ``--report`` or ``--unlock``
  next to a real run), it reads the cached plan too and changes nothing the running jobs read;
* otherwise it lists the input and writes the plan under a lock, atomically (``ingest.plan_shards``).

Demo images and the demo's base model are made by rules (``rules/demo.smk``), never while parsing: the
demo's shard plan comes from the list of files its ``demo_data`` rule will write.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any

from relightflow import ingest

log = logging.getLogger(__name__)

STATE_DIR = "results/ingest/state"
SNAKEMAKE_LOCKS = ".snakemake/locks"


def input_root(config: dict[str, Any]) -> str:
    """The folder image paths are relative to."""
    inp = config["input"]
    if inp["list"]:
        return str(inp["list_root"] or Path(inp["list"]).parent)
    return str(inp["root"])


def demo_generated(config: dict[str, Any]) -> bool:
    """True when the input images are the demo's, written by the ``demo_data`` rule."""
    return bool(config["demo"]["materialize"]) and not config["input"]["list"]


def demo_base_weights() -> str:
    """The weights file the demo's base model is installed from (shipped in the package)."""
    from relightflow.testing.demo_base import WEIGHTS

    return str(WEIGHTS)


def list_input(config: dict[str, Any]) -> list[ingest.Entry]:
    """The input's entries: the demo's planned files, the list file's paths, or the folder's images."""
    inp = config["input"]
    if demo_generated(config):
        from relightflow.demo import expected_files

        return [ingest.Entry(rel) for rel in expected_files(**config["demo"]["options"])]
    if inp["list"]:
        return ingest.scan_list(inp["list"], input_root(config), inp["list_column"])
    return ingest.scan_folder(inp["root"], inp["extensions"])


def is_remote_job(workflow: Any) -> bool:
    """True inside a job spawned by Snakemake (cluster jobstep or subprocess), not on the main host."""
    return bool(getattr(workflow, "remote_exec", False) or getattr(workflow, "subprocess_exec", False))


def another_run_holds(workdir: str | os.PathLike = ".") -> bool:
    """True while another Snakemake run has this working directory locked (its lock files exist)."""
    return any(os.path.getsize(p) for p in glob.glob(os.path.join(workdir, SNAKEMAKE_LOCKS, "*.lock")))


def plan(config: dict[str, Any], remote: bool = False, state_dir: str = STATE_DIR) -> list[str]:
    """Shard ids for this run (see the module docstring)."""
    if remote or another_run_holds():
        shards = ingest.cached_shards(state_dir)
        if shards:
            if not remote:
                log.warning("another Snakemake run holds this directory: using its shard plan unchanged")
            return shards
    entries = list_input(config)
    if not entries:
        src = config["input"]["list"] or config["input"]["root"]
        raise ValueError(f"no input images found in {src} (extensions {config['input']['extensions']})")
    return ingest.plan_shards(entries, int(config["shards"]["size"]), state_dir)


def shard_list_path(shard: str, state_dir: str = STATE_DIR) -> str:
    return ingest.shard_list_file(state_dir, shard)


def enabled_stages(config: dict[str, Any]) -> list[str]:
    """Stages that ``rule all`` builds (config ``stages``)."""
    return list(config["stages"])
