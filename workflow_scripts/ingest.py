"""Adapter: rule ingest -> relightflow.ingest.IngestStage on one shard."""

from relightflow.ingest import IngestStage
from relightflow.logs import logged
from relightflow.shards import run_rule

with logged(snakemake.log[0]):
    run_rule(snakemake, IngestStage(snakemake.input.listing, snakemake.params.root, snakemake.params.cfg))
