# Demo: the built-in demo's images and its tiny base model are made by these two rules (profiles/demo),
# so they show in the DAG like any other job; nothing is created while the workflow is parsed. They exist
# only when the demo is configured, so no rule can ever overwrite a real input folder.

DEMO = config["demo"]

if rfw.demo_generated(config):

    rule demo_data:
        output:
            images=directory(config["input"]["root"]),
        params:
            options=DEMO["options"],
        log:
            f"{RESULTS}/logs/demo/demo_data.log",
        benchmark:
            f"{RESULTS}/benchmarks/demo/demo_data.tsv"
        conda:
            "../envs/base.yaml"
        script:
            "../workflow_scripts/demo_data.py"


if DEMO["base_model"]:

    rule demo_base_model:
        input:
            weights=rfw.demo_base_weights(),  # a new shipped base reinstalls (and retrains)
        output:
            model=directory(DEMO["base_model"]),
        log:
            f"{RESULTS}/logs/demo/demo_base_model.log",
        benchmark:
            f"{RESULTS}/benchmarks/demo/demo_base_model.tsv"
        conda:
            "../envs/train.yaml"
        script:
            "../workflow_scripts/demo_base_model.py"
