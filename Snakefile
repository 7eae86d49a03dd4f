# relightflow: photo collection -> (degraded input, lighting instruction, original) triplets -> relighting model.
# This file only declares: configuration, its validation, the stage rule files and the final targets.
import os

from snakemake.utils import min_version

from relightflow import cluster
from relightflow.config import validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


validate(config)  # every setting's default and description: src/relightflow/config.schema.yaml


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/ingest.smk"
include: "rules/filter.smk"
include: "rules/pairs.smk"
include: "rules/captions.smk"
include: "rules/dataset.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"


# Under profiles/slurm every job must fit one node of the partition (relightflow.cluster, docs/cluster.md):
# a request above it (memory, GPUs, cpus_per_task, runtime) fails here, naming the rule and the resource,
# before anything is submitted, instead of pending in Slurm forever; retries that grow past it fail too.
onstart:
    cluster.enforce(workflow)


localrules:
    all,


rule all:
    input:
        fixed=fixed_targets,
        per_shard=per_shard_targets,  # a separate input: pending until the `select` checkpoint has run
    default_target: True
