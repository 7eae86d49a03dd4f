"""Adapter: rule segment -> relightflow.pairs.run.SegmentStage on one shard."""

from relightflow.logs import logged
from relightflow.pairs.run import SegmentStage
from relightflow.shards import run_rule

with logged(snakemake.log[0]):
    stage = SegmentStage(selected=snakemake.input.selected, cfg=snakemake.params.cfg,
                         cache_dir=snakemake.params.cache_dir, masks_dir=snakemake.output.masks)  # fmt: skip
    run_rule(snakemake, stage)
