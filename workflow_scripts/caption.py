"""Adapter: rule caption -> relightflow.captions.run.CaptionStage on one shard."""

from relightflow.captions.run import CaptionStage
from relightflow.logs import logged
from relightflow.shards import run_rule

with logged(snakemake.log[0]):
    stage = CaptionStage(snakemake.input.selected, snakemake.input.segments, snakemake.params.cfg,
                         snakemake.params.cache_dir)  # fmt: skip
    run_rule(snakemake, stage)
