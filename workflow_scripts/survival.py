"""Adapter: rule survival -> relightflow.survival.write_survival."""

from relightflow.logs import logged
from relightflow.survival import write_survival

with logged(snakemake.log[0]):
    out = snakemake.output
    outputs = {"html": out.html, "plot": out.plot, "changes": out.changes, "table": out.table}
    write_survival(snakemake.input.stats, snakemake.input.manifests, outputs, snakemake.params.bounds)
