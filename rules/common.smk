# Shared declarations: the shard list (computed when the workflow is parsed, from a cached listing of the
# input), path helpers and the final targets. No stage logic here: it lives in the relightflow package.
from relightflow import workflow as rfw

RESULTS = "results"
SHARDS = rfw.plan(config, remote=rfw.is_remote_job(workflow))
STAGES = rfw.enabled_stages(config)


def shard_list(wildcards):
    """The list file (paths, sizes, mtimes) of one shard: changes exactly when its images change."""
    return rfw.shard_list_path(wildcards.shard)


def ingest_targets():
    return [f"{RESULTS}/ingest/rejects.parquet", f"{RESULTS}/ingest/stats.json"]


ALL_TARGETS = ingest_targets()
