"""Adapter: rule score_lighting -> relightflow.filter.score.ScoreStage on one shard."""

from relightflow.filter.score import ScoreStage
from relightflow.logs import logged
from relightflow.shards import run_rule

with logged(snakemake.log[0]):
    stage = ScoreStage(manifest=snakemake.input.manifest, backend=snakemake.params.backend, cfg=snakemake.params.cfg)
    run_rule(snakemake, stage)
