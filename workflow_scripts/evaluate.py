"""Adapter: rule evaluate -> relightflow.evaluate.evaluate_split (on this job's own GPU slot)."""

from relightflow.evaluate import evaluate_split
from relightflow.gpu_slots import gpu_slots
from relightflow.logs import logged

with logged(snakemake.log[0]), gpu_slots(snakemake.resources.gpu):
    evaluate_split(
        snakemake.input.dataset,
        snakemake.input.model,
        dict(snakemake.output.items()),
        snakemake.params.cfg,
        snakemake.params.seed,
    )
