# Shared declarations: the shard list (computed when the workflow is parsed, from a cached listing of the
# input), path helpers and the final targets. No stage logic here: it lives in the relightflow package.
from relightflow import workflow as rfw

RESULTS = "results"
SHARDS = rfw.plan(config, remote=rfw.is_remote_job(workflow))
STAGES = rfw.enabled_stages(config)


def shard_list(wildcards):
    """The list file (paths, sizes, mtimes) of one shard: changes exactly when its images change."""
    return rfw.shard_list_path(wildcards.shard)


# Each stage file registers what `rule all` builds for it; config `stages` picks which stages run.
TARGETS = {}


def all_targets(wildcards):
    return [t for stage in STAGES for t in TARGETS.get(stage, [])]
