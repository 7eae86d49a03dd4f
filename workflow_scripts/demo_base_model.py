"""Adapter: rule demo_base_model -> relightflow.demo.write_base_model."""

from relightflow.demo import write_base_model
from relightflow.logs import logged

with logged(snakemake.log[0]):
    write_base_model(snakemake.output.model, snakemake.input.weights)
