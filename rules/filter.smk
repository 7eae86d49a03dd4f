# Filter: score every image's lighting per shard (GPU for CLIP), then `select` gathers all shards: size
# filter, near-duplicate removal, the cut and stratified splits. `select` is a checkpoint that writes one
# selection file per shard (rewritten only when its bytes change), so adding an image reruns only that
# shard's downstream jobs. Scoring params carry only what shapes scores (backend + its section);
# selection params only selection keys: a prompt change reruns score + select, a split change only select.

from relightflow.filter.combined import backend_config

FILTER = config["filter"]
FILTER_BACKEND = FILTER["backend"]
FILTER_CFG = backend_config(FILTER, FILTER_BACKEND)  # clip+stats: filter.clip + filter.gate
FILTER_GPU = FILTER_BACKEND in ("clip", "clip+stats")
SELECT_KEYS = ("num_images", "threshold", "top_fraction", "min_side", "splits", "dedup")
FILTER_WORKERS = FILTER_CFG["num_workers"]  # decode workers of the data path


rule score_lighting:
    input:
        manifest=f"{RESULTS}/ingest/manifests/{{shard}}.parquet",
    output:
        table=f"{RESULTS}/filter/scores/{{shard}}.parquet",
        rejects=f"{RESULTS}/filter/rejects/{{shard}}.parquet",
        stats=f"{RESULTS}/filter/stats/{{shard}}.json",
    params:
        backend=FILTER_BACKEND,
        cfg=FILTER_CFG,
        images=config["images"],
    threads: FILTER_WORKERS + 1
    log:
        f"{RESULTS}/logs/filter/score_lighting/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/filter/score_lighting/{{shard}}.tsv"
    resources:
        gpu=1 if FILTER_GPU else 0,
        mem_mb=8000 if FILTER_GPU else 2000,
        runtime=60,
    conda:
        "../envs/clip.yaml"
    script:
        "../workflow_scripts/score_lighting.py"


checkpoint select:
    input:
        scores=expand(f"{RESULTS}/filter/scores/{{shard}}.parquet", shard=SHARDS),
    output:
        selection=f"{RESULTS}/filter/selection.parquet",
        train=f"{RESULTS}/filter/splits/train.parquet",
        val=f"{RESULTS}/filter/splits/val.parquet",
        test=f"{RESULTS}/filter/splits/test.parquet",
        unselected=f"{RESULTS}/filter/unselected.parquet",
        selected=expand(f"{RESULTS}/filter/selected/{{shard}}.parquet", shard=SHARDS),
        stats=f"{RESULTS}/filter/stats.json",
        histogram=report(
            f"{RESULTS}/filter/score_histogram.png", category="2. Filter", caption="../report/filter_histogram.rst"
        ),
        contact_sheet=report(
            f"{RESULTS}/filter/contact_sheet.png", category="2. Filter", caption="../report/filter_contact_sheet.rst"
        ),
    params:
        cfg={key: FILTER[key] for key in SELECT_KEYS},
        seed=config["seed"],
        shards=SHARDS,
    log:
        f"{RESULTS}/logs/filter/select.log",
    benchmark:
        f"{RESULTS}/benchmarks/filter/select.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/base.yaml"
    script:
        "../workflow_scripts/select.py"


TARGETS["filter"] = [
    f"{RESULTS}/filter/selection.parquet",
    f"{RESULTS}/filter/stats.json",
    f"{RESULTS}/filter/score_histogram.png",
    f"{RESULTS}/filter/contact_sheet.png",
]
