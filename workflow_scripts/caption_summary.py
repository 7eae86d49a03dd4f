"""Adapter: rule caption_summary -> relightflow.captions.run.gather_captions."""

from relightflow.captions.run import gather_captions
from relightflow.logs import logged

with logged(snakemake.log[0]):
    gather_captions(
        list(snakemake.input.stats),
        list(snakemake.input.rejects),
        snakemake.output.stats,
        snakemake.output.rejects,
    )
