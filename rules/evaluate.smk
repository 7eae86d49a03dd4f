# Evaluate: relight the test split with the trained model (and configured baseline models), score every
# prediction against the real target (PSNR, SSIM, LPIPS when local), re-measure its lighting exactly as the
# instruction was made (the caption's subject mask and measuring size, carried by the dataset) with the real
# target as the ceiling, give every mean its n and a seeded bootstrap interval, say in one line whether the
# model beats doing nothing (paired bootstrap vs identity), and draw comparison grids. Then the report
# extras: caption examples of the exported dataset, the survival table (images in -> kept, stage by stage,
# and the pairs' measured change per degradation kind) and the per-rule runtimes table built from every
# job's `benchmark:` file.

EVALUATE = config["evaluate"]
EVAL_SPLIT = EVALUATE["split"]
EVAL_DIR = f"{RESULTS}/evaluate"


rule evaluate:
    input:
        dataset=f"{RESULTS}/dataset/{EVAL_SPLIT}",
        model=f"{RESULTS}/train/model",
    output:
        metrics=report(
            f"{EVAL_DIR}/metrics.json", category="7. Evaluate", caption="../report/evaluate_metrics.rst"
        ),
        html=report(f"{EVAL_DIR}/metrics.html", category="7. Evaluate", caption="../report/evaluate_metrics.rst"),
        plot=report(f"{EVAL_DIR}/metrics.png", category="7. Evaluate", caption="../report/evaluate_plot.rst"),
        grid=report(f"{EVAL_DIR}/grid.png", category="7. Evaluate", caption="../report/evaluate_grid.rst"),
        table=f"{EVAL_DIR}/metrics.parquet",
        predictions=directory(f"{EVAL_DIR}/predictions"),
        rejects=f"{EVAL_DIR}/rejects.parquet",
        stats=f"{EVAL_DIR}/stats.json",
    params:
        cfg=EVALUATE,
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/evaluate/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/evaluate.tsv"
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow_scripts/evaluate.py"


rule caption_examples:
    input:
        splits=expand(
            f"{RESULTS}/dataset/{{split}}", split=[s for s, ratio in config["filter"]["splits"].items() if ratio > 0]
        ),
    output:
        sheet=report(
            f"{EVAL_DIR}/caption_examples.png", category="4. Captions", caption="../report/evaluate_captions.rst"
        ),
        html=report(
            f"{EVAL_DIR}/caption_stats.html", category="4. Captions", caption="../report/evaluate_captions.rst"
        ),
    params:
        num_examples=EVALUATE["caption_examples"],
    log:
        f"{RESULTS}/logs/evaluate/caption_examples.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/caption_examples.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/base.yaml"
    script:
        "../workflow_scripts/caption_examples.py"


RUNTIME_OUTPUTS = {
    "html": f"{RESULTS}/runtimes/runtimes.html",
    "plot": f"{RESULTS}/runtimes/runtimes.png",
    "jobs": f"{RESULTS}/runtimes/jobs.parquet",
}


rule runtimes:
    input:
        # every other final target: the table is built once all jobs (and their benchmarks) are done
        lambda wildcards: [t for t in all_targets(wildcards) if t not in RUNTIME_OUTPUTS.values()],
    output:
        html=report(RUNTIME_OUTPUTS["html"], category="8. Runtimes", caption="../report/evaluate_runtimes.rst"),
        plot=report(RUNTIME_OUTPUTS["plot"], category="8. Runtimes", caption="../report/evaluate_runtimes.rst"),
        jobs=RUNTIME_OUTPUTS["jobs"],
    params:
        benchmarks=f"{RESULTS}/benchmarks",
        # {rule: benchmark pattern} of every rule, so each benchmark file is attributed to its rule
        patterns=lambda wildcards: {r.name: str(r.benchmark) for r in workflow.rules if r.benchmark},
    log:
        f"{RESULTS}/logs/runtimes.log",
    benchmark:
        f"{RESULTS}/benchmarks/runtimes.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/base.yaml"
    script:
        "../workflow_scripts/runtimes.py"


SURVIVAL_OUTPUTS = {
    "html": f"{RESULTS}/survival/survival.html",
    "plot": f"{RESULTS}/survival/survival.png",
    "changes": f"{RESULTS}/survival/pair_changes.png",
    "table": f"{RESULTS}/survival/survival.parquet",
}
# the stats of each enabled stage: gathered summaries, and the per-shard lighting scores (no gather of their own)
SURVIVAL_STATS = {
    "ingest": [f"{RESULTS}/ingest/stats.json"],
    "filter": [*expand(f"{RESULTS}/filter/stats/{{shard}}.json", shard=SHARDS), f"{RESULTS}/filter/stats.json"],
    "pairs": [f"{RESULTS}/pairs/stats.json"],
    "captions": [f"{RESULTS}/captions/stats.json"],
    "dataset": [f"{RESULTS}/dataset/stats.json"],
}


rule survival:
    input:
        stats=[path for stage in STAGES for path in SURVIVAL_STATS.get(stage, [])],
        # after the select checkpoint only (after_select): asked for before it, every shard's pairs job would
        # query the pending checkpoint, which costs O(shards^2) in a dry run
        manifests=after_select(f"{RESULTS}/pairs/manifests/{{shard}}.parquet") if "pairs" in STAGES else [],
    output:
        html=report(SURVIVAL_OUTPUTS["html"], category="9. Survival", caption="../report/survival.rst"),
        plot=report(SURVIVAL_OUTPUTS["plot"], category="9. Survival", caption="../report/survival.rst"),
        changes=report(
            SURVIVAL_OUTPUTS["changes"], category="3. Pairs", subcategory="quality gate",
            caption="../report/pairs_changes.rst",
        ),
        table=SURVIVAL_OUTPUTS["table"],
    params:
        bounds=config["pairs"]["quality"]["bounds"],
    log:
        f"{RESULTS}/logs/survival.log",
    benchmark:
        f"{RESULTS}/benchmarks/survival.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/base.yaml"
    script:
        "../workflow_scripts/survival.py"


TARGETS["evaluate"] = [
    f"{EVAL_DIR}/metrics.json",
    f"{EVAL_DIR}/grid.png",
    f"{EVAL_DIR}/caption_examples.png",
    *SURVIVAL_OUTPUTS.values(),
    *RUNTIME_OUTPUTS.values(),
]
