"""Adapter: rule degrade -> relightflow.pairs.run.DegradeStage on one shard."""

from relightflow.logs import logged
from relightflow.pairs.run import DegradeStage
from relightflow.shards import run_rule

with logged(snakemake.log[0]):
    out = snakemake.output
    stage = DegradeStage(segments=snakemake.input.segments, cfg=snakemake.params.cfg, seed=snakemake.params.seed,
                         images_dir=out.images, contact_path=out.contact_sheet, threads=snakemake.threads)  # fmt: skip
    run_rule(snakemake, stage)
