"""Adapter: rule demo_data -> relightflow.demo.materialize."""

from relightflow.demo import materialize
from relightflow.logs import logged

with logged(snakemake.log[0]):
    materialize(snakemake.output.images, **snakemake.params.options)
