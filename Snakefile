# relightflow: photo collection -> (degraded input, lighting instruction, original) triplets -> relighting model.
# This file only declares: configuration, its validation, the stage rule files and the final targets.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/ingest.smk"


localrules:
    all,


rule all:
    input:
        ALL_TARGETS,
    default_target: True
