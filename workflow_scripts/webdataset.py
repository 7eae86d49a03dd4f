"""Adapter: rule webdataset -> relightflow.dataset.write_webdataset."""

from relightflow.dataset import write_webdataset
from relightflow.logs import logged

with logged(snakemake.log[0]):
    write_webdataset(snakemake.input.data, snakemake.output.shards, snakemake.params.rows_per_file)
