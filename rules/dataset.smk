# Dataset: one gather job per split joins the selection, every shard's pairs manifest and captions table and
# streams the (degraded input, instruction, original) triplets into a Hugging Face Parquet dataset; optional
# WebDataset tar shards and cached VAE latents (GPU) at the training resolution.

DATASET = config["dataset"]
SPLITS = [s for s, ratio in config["filter"]["splits"].items() if ratio > 0]


wildcard_constraints:
    split="|".join(config["filter"]["splits"]),


rule export_dataset:
    input:
        selection=f"{RESULTS}/filter/selection.parquet",
        pairs=after_select(f"{RESULTS}/pairs/manifests/{{shard}}.parquet"),
        captions=after_select(f"{RESULTS}/captions/{{shard}}.parquet"),
    output:
        data=directory(f"{RESULTS}/dataset/{{split}}"),
        stats=f"{RESULTS}/dataset/stats/{{split}}.json",
        rejects=f"{RESULTS}/dataset/rejects/{{split}}.parquet",
    params:
        cfg=DATASET,
    log:
        f"{RESULTS}/logs/dataset/export_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/dataset/export_{{split}}.tsv"
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow_scripts/export_dataset.py"


rule dataset_summary:
    input:
        stats=expand(f"{RESULTS}/dataset/stats/{{split}}.json", split=SPLITS),
        rejects=expand(f"{RESULTS}/dataset/rejects/{{split}}.parquet", split=SPLITS),
    output:
        stats=report(f"{RESULTS}/dataset/stats.json", category="5. Dataset", caption="../report/train_dataset.rst"),
        rejects=f"{RESULTS}/dataset/rejects.parquet",
    log:
        f"{RESULTS}/logs/dataset/summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/dataset/summary.tsv"
    conda:
        "../envs/base.yaml"
    script:
        "../workflow_scripts/gather.py"


rule webdataset:
    input:
        data=f"{RESULTS}/dataset/{{split}}",
    output:
        shards=directory(f"{RESULTS}/dataset/webdataset/{{split}}"),
    params:
        rows_per_file=DATASET["rows_per_file"],
    log:
        f"{RESULTS}/logs/dataset/webdataset_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/dataset/webdataset_{{split}}.tsv"
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/base.yaml"
    script:
        "../workflow_scripts/webdataset.py"


rule cache_latents:
    input:
        data=f"{RESULTS}/dataset/{{split}}",
    output:
        latents=directory(f"{RESULTS}/dataset/latents/{{split}}"),
    params:
        pretrained=config["train"]["pretrained"],
        vae=config["train"]["vae"],
        resolution=config["train"]["resolution"],
        batch_size=DATASET["latents_batch_size"],
    log:
        f"{RESULTS}/logs/dataset/cache_latents_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/dataset/cache_latents_{{split}}.tsv"
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow_scripts/cache_latents.py"


TARGETS["dataset"] = [
    f"{RESULTS}/dataset/stats.json",
    *expand(f"{RESULTS}/dataset/{{split}}", split=SPLITS),
    *(expand(f"{RESULTS}/dataset/webdataset/{{split}}", split=SPLITS) if DATASET["webdataset"] else []),
    *([f"{RESULTS}/dataset/latents/train"] if DATASET["cache_latents"] else []),
]
