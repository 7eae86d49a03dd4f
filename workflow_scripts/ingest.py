"""Adapter: rule ingest -> relightflow.ingest.IngestStage on one shard."""

from relightflow.ingest import IngestStage
from relightflow.logs import logged
from relightflow.shards import run_rule

with logged(snakemake.log[0]):
    stage = IngestStage(listing=snakemake.input.listing, root=snakemake.params.root, cfg=snakemake.params.cfg)
    run_rule(snakemake, stage)
