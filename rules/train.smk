# Train on the exported train split (or its cached latents): in the job's process with 0 or 1 GPU,
# `accelerate launch` with one process per GPU above that. Checkpoints live in results/train/checkpoints,
# outside the rule's outputs: a rerun resumes from the newest one of the same run (same settings, base
# model and data) and deletes the others, so a killed job continues and a changed one starts over.

TRAIN = config["train"]


rule train:
    input:
        unpack(train_inputs),
    output:
        model=directory(f"{RESULTS}/train/model"),
        summary=f"{RESULTS}/train/summary.json",
        curve=report(f"{RESULTS}/train/loss_curve.png", category="6. Train", caption="../report/train.rst"),
    params:
        cfg={**TRAIN, "seed": config["seed"] if TRAIN["seed"] is None else TRAIN["seed"]},
        work_dir=lambda wildcards, output: output.summary.rsplit("/", 1)[0],  # results/train: checkpoints, logs
    threads: TRAIN["threads"]  # CPU threads shared by the accelerate processes (capped by --cores)
    log:
        f"{RESULTS}/logs/train/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/train.tsv"
    resources:
        gpu=TRAIN["gpus"],
        mem_mb=TRAIN["mem_mb"],
        runtime=TRAIN["runtime"],
    conda:
        "../envs/train.yaml"
    script:
        "../workflow_scripts/train.py"


TARGETS["train"] = [f"{RESULTS}/train/model", f"{RESULTS}/train/summary.json", f"{RESULTS}/train/loss_curve.png"]
