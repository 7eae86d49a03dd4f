"""Adapter: rule export_dataset -> relightflow.dataset.export_split."""

from relightflow.dataset import export_split
from relightflow.logs import logged

with logged(snakemake.log[0]):
    export_split(
        snakemake.wildcards.split,
        snakemake.input.selection,
        snakemake.input.pairs,
        snakemake.input.captions,
        snakemake.output.data,
        snakemake.output.stats,
        snakemake.output.rejects,
        snakemake.params.cfg,
    )
