"""Adapter: every stage's summary rule -> relightflow.shards.gather (per-shard stats and rejects)."""

from relightflow.logs import logged
from relightflow.shards import gather

with logged(snakemake.log[0]):
    gather(snakemake.input.stats, snakemake.input.rejects, snakemake.output.stats, snakemake.output.rejects)
