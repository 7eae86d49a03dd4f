"""Adapter: rule ingest_summary -> relightflow.ingest.gather_ingest."""

from relightflow.ingest import gather_ingest
from relightflow.logs import logged

with logged(snakemake.log[0]):
    gather_ingest(
        snakemake.input.stats, snakemake.input.rejects, snakemake.output.stats, snakemake.output.rejects
    )
