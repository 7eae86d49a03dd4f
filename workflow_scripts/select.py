"""Adapter: checkpoint select -> relightflow.filter.select.select_images."""

from relightflow.filter.select import select_images
from relightflow.logs import logged

with logged(snakemake.log[0]):
    outputs = {
        k: snakemake.output[k] for k in ("selection", "unselected", "stats", "histogram", "contact_sheet")
    }
    outputs.update({split: snakemake.output[split] for split in ("train", "val", "test")})
    selected = dict(zip(snakemake.params.shards, snakemake.output.selected, strict=True))
    select_images(
        snakemake.input.scores, selected, outputs, dict(snakemake.params.cfg), snakemake.params.seed
    )
