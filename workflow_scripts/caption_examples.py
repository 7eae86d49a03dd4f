"""Adapter: rule caption_examples -> relightflow.evaluate.caption_examples."""

from relightflow.evaluate import caption_examples
from relightflow.logs import logged

with logged(snakemake.log[0]):
    caption_examples(
        snakemake.input.splits, snakemake.output.sheet, snakemake.output.html, snakemake.params.num_examples
    )
