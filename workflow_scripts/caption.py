"""Adapter: rule caption -> relightflow.captions.run.caption_shard."""

from relightflow.captions.run import caption_shard
from relightflow.gpu_slots import gpu_slots
from relightflow.logs import logged

with logged(snakemake.log[0]), gpu_slots(snakemake.resources.get("gpu", 0)):
    caption_shard(
        snakemake.input.selected,
        snakemake.input.segments,
        snakemake.wildcards.shard,
        snakemake.output.captions,
        snakemake.output.rejects,
        snakemake.output.stats,
        dict(snakemake.params.cfg),
        snakemake.params.cache_dir,
    )
