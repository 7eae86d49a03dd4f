# Shared declarations: the shard list (computed when the workflow is parsed, from a cached listing of the
# input), path helpers and the final targets. No stage logic here: it lives in the relightflow package.
from relightflow import workflow as rfw

RESULTS = "results"
SHARDS = rfw.plan(config, remote=rfw.is_remote_job(workflow))
STAGES = rfw.enabled_stages(config)


def shard_list(wildcards):
    """The list file (paths, sizes, mtimes) of one shard: changes exactly when its images change."""
    return rfw.shard_list_path(wildcards.shard)


def demo_images(wildcards):
    """The demo_data rule's folder when the input is the built-in demo (its ingest waits for it)."""
    return [config["input"]["root"]] if rfw.demo_generated(config) else []


# Each stage file registers what `rule all` builds for it; config `stages` picks which stages run.
TARGETS = {}


def all_targets(wildcards):
    """The targets of the enabled stages (callables are evaluated), all that the `all` rule builds."""
    return fixed_targets(wildcards) + per_shard_targets(wildcards)


def fixed_targets(wildcards):
    """The enabled stages' targets known before the `select` checkpoint runs."""
    return [t for stage in STAGES for t in TARGETS.get(stage, []) if not callable(t)]


def per_shard_targets(wildcards):
    """The enabled stages' per-shard targets downstream of the `select` checkpoint (see after_select)."""
    return [f for stage in STAGES for t in TARGETS.get(stage, []) if callable(t) for f in t(wildcards)]


def after_select(*patterns, **more):
    """Input function: ``patterns`` expanded over every shard, asked for only once the `select` checkpoint
    has run. Before that, Snakemake builds no per-shard job downstream of the checkpoint (one pending
    checkpoint instead of one per job: a dry run of 70k images stays cheap); after it, the DAG is
    re-evaluated and only shards whose selection changed rerun."""

    def files(wildcards):
        checkpoints.select.get()
        return expand(list(patterns), shard=SHARDS, **more)

    return files


def selected_shard(wildcards):
    """Input function for per-shard stages: the shard's selection, once the `select` checkpoint ran."""
    checkpoints.select.get()
    return f"{RESULTS}/filter/selected/{wildcards.shard}.parquet"


def train_inputs(wildcards):
    """The train split, the val split (validation grids) and, when cached, the train latents."""
    inputs = {"train": f"{RESULTS}/dataset/train"}
    if config["demo"]["base_model"]:
        inputs["base_model"] = config["demo"]["base_model"]
    if config["filter"]["splits"].get("val", 0) > 0:  # splits are user-named
        inputs["val"] = f"{RESULTS}/dataset/val"
    if config["dataset"]["cache_latents"] and config["train"]["model"] != "flux-kontext":
        inputs["latents"] = f"{RESULTS}/dataset/latents/train"
    return inputs
