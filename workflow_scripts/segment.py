"""Adapter: rule segment -> relightflow.pairs.run.SegmentStage on one shard."""

from relightflow.logs import logged
from relightflow.pairs.run import SegmentStage
from relightflow.shards import run_rule

with logged(snakemake.log[0]):
    stage = SegmentStage(snakemake.input.selected, snakemake.params.cfg, snakemake.params.cache_dir, snakemake.output.masks)
    run_rule(snakemake, stage)
