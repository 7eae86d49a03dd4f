# relightflow: photo collection -> (degraded input, lighting instruction, original) triplets -> relighting model.
# This file only declares: configuration, its validation, the stage rule files and the final targets.
import os

from snakemake.utils import min_version

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


localrules:
    all,


rule all:
    input:
        fixed=fixed_targets,
        per_shard=per_shard_targets,  # a separate input: pending until the `select` checkpoint has run
    default_target: True
