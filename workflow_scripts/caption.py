"""Adapter: rule caption -> relightflow.captions.run.CaptionStage on one shard."""

from relightflow.captions.run import CaptionStage
from relightflow.logs import logged
from relightflow.shards import run_rule

with logged(snakemake.log[0]):
    # requests in flight: the job's granted api_requests (Snakemake lowers it to the profile's cap)
    granted = int(snakemake.resources.get("api_requests", 0)) or None
    stage = CaptionStage(selected=snakemake.input.selected, segments=snakemake.input.segments,
                         cfg=snakemake.params.cfg, cache_dir=snakemake.params.cache_dir, max_concurrency=granted)  # fmt: skip
    run_rule(snakemake, stage)
