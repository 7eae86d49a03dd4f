"""Adapter: rule train -> relightflow.train.launch.launch (accelerate launch; resumes from checkpoints)."""

from relightflow.logs import logged
from relightflow.train.launch import launch

with logged(snakemake.log[0]):
    launch(
        snakemake.params.cfg,
        snakemake.input.train,
        snakemake.output.model,
        snakemake.params.work_dir,
        val_data=snakemake.input.get("val"),
        latents=snakemake.input.get("latents"),
        threads=snakemake.threads,
    )
