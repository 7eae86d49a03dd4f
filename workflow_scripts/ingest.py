"""Adapter: rule ingest -> relightflow.ingest.ingest_shard."""

from relightflow.ingest import ingest_shard
from relightflow.logs import logged

with logged(snakemake.log[0]):
    ingest_shard(
        snakemake.input.listing,
        snakemake.params.root,
        snakemake.wildcards.shard,
        snakemake.output.manifest,
        snakemake.output.rejects,
        snakemake.output.stats,
        snakemake.params.cfg,
    )
