"""Adapter: rule pairs_summary -> relightflow.pairs.run.gather_pairs."""

from relightflow.logs import logged
from relightflow.pairs.run import gather_pairs

with logged(snakemake.log[0]):
    gather_pairs(
        snakemake.input.segment,
        snakemake.input.degrade,
        snakemake.input.rejects,
        snakemake.output.stats,
        snakemake.output.rejects,
    )
