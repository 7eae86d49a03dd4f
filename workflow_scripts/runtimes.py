"""Adapter: rule runtimes -> relightflow.evaluate.write_runtimes."""

from relightflow.evaluate import write_runtimes
from relightflow.logs import logged

with logged(snakemake.log[0]):
    write_runtimes(
        snakemake.params.benchmarks,
        snakemake.output.jobs,
        snakemake.output.html,
        snakemake.output.plot,
        snakemake.params.patterns,
    )
