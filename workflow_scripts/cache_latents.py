"""Adapter: rule cache_latents -> relightflow.train.latents.cache_latents (on one GPU slot)."""

from relightflow.gpu_slots import gpu_slots
from relightflow.logs import logged
from relightflow.train.latents import cache_latents

with logged(snakemake.log[0]), gpu_slots(snakemake.resources.gpu):
    cache_latents(
        snakemake.input.data,
        snakemake.output.latents,
        snakemake.params.pretrained,
        snakemake.params.resolution,
        vae=snakemake.params.vae,
        batch_size=snakemake.params.batch_size,
    )
