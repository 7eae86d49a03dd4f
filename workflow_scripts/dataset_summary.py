"""Adapter: rule dataset_summary -> relightflow.dataset.summarize."""

from relightflow.dataset import summarize
from relightflow.logs import logged

with logged(snakemake.log[0]):
    summarize(snakemake.input.stats, snakemake.output.stats)
