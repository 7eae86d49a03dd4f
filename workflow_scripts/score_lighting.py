"""Adapter: rule score_lighting -> relightflow.filter.score.score_shard (on its own GPU slot, if any)."""

from relightflow.filter.score import score_shard
from relightflow.gpu_slots import gpu_slots
from relightflow.logs import logged

with logged(snakemake.log[0]), gpu_slots(snakemake.resources.get("gpu", 0)):
    score_shard(
        snakemake.input.manifest,
        snakemake.wildcards.shard,
        snakemake.output.scores,
        snakemake.output.rejects,
        snakemake.output.stats,
        snakemake.params.backend,
        dict(snakemake.params.cfg),
    )
