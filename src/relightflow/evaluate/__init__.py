"""Evaluation of the trained relighting model (metrics, instruction following, baselines, grids) and the
report extras: caption examples of the exported dataset and the per-rule runtimes table."""

from relightflow.evaluate.examples import caption_examples
from relightflow.evaluate.run import evaluate_split
from relightflow.evaluate.runtimes import write_runtimes

__all__ = ["caption_examples", "evaluate_split", "write_runtimes"]
