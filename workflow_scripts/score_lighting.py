"""Adapter: rule score_lighting -> relightflow.filter.score.ScoreStage on one shard."""

from relightflow.filter.score import ScoreStage
from relightflow.logs import logged
from relightflow.shards import run_rule

with logged(snakemake.log[0]):
    run_rule(snakemake, ScoreStage(snakemake.input.manifest, snakemake.params.backend, snakemake.params.cfg))
