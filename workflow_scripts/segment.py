"""Adapter: rule segment -> relightflow.pairs.run.segment_shard."""

from relightflow.gpu_slots import gpu_slots
from relightflow.logs import logged
from relightflow.pairs.run import segment_shard

with logged(snakemake.log[0]), gpu_slots(snakemake.resources.get("gpu", 0)):
    segment_shard(
        snakemake.input.selected,
        snakemake.wildcards.shard,
        snakemake.output.segments,
        snakemake.output.masks,
        snakemake.output.rejects,
        snakemake.output.stats,
        snakemake.params.cfg,
        snakemake.params.cache_dir,
    )
