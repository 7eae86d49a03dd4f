"""Adapter: rule degrade -> relightflow.pairs.run.degrade_shard."""

from relightflow.gpu_slots import gpu_slots
from relightflow.logs import logged
from relightflow.pairs.run import degrade_shard

with logged(snakemake.log[0]), gpu_slots(snakemake.resources.get("gpu", 0)):
    degrade_shard(
        snakemake.input.segments,
        snakemake.wildcards.shard,
        snakemake.output.manifest,
        snakemake.output.images,
        snakemake.output.contact_sheet,
        snakemake.output.rejects,
        snakemake.output.stats,
        snakemake.params.cfg,
        snakemake.params.seed,
        threads=snakemake.threads,
    )
