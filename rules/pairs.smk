# Pairs: per shard, `segment` finds the subject of every selected image (SAM2 / SAM3 on a GPU, or the
# offline GrabCut / whole frame on a CPU; masks cached by content under cache_dir/segment), then `degrade`
# flattens the lighting (Retinex or Marigold albedo) and re-lights it badly in N seeded variants. The
# degraded image is the training input, the original the target. Params carry only the pairs section
# (+ seed, cache dir), so a caption or training change never reruns them.

PAIRS = config["pairs"]
GPU_SEGMENTERS = ("sam2", "sam3")


SEGMENT_ON_GPU = PAIRS["segmenter"] in GPU_SEGMENTERS  # classical / none run on a CPU
ALBEDO_ON_GPU = PAIRS["albedo"] == "marigold"  # Retinex is CPU only


rule segment:
    input:
        selected=selected_shard,
    output:
        table=f"{RESULTS}/pairs/segments/{{shard}}.parquet",
        masks=directory(f"{RESULTS}/pairs/masks/{{shard}}"),
        rejects=f"{RESULTS}/pairs/rejects/segment/{{shard}}.parquet",
        stats=f"{RESULTS}/pairs/stats/segment/{{shard}}.json",
    params:
        cfg={k: v for k, v in PAIRS.items() if k in ("segmenter", PAIRS["segmenter"], "min_mask_fraction", "feather_px", "max_side")},
        cache_dir=config["cache_dir"],
        images=config["images"],
    log:
        f"{RESULTS}/logs/pairs/segment/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pairs/segment/{{shard}}.tsv"
    resources:
        gpu=lambda wildcards: 1 if SEGMENT_ON_GPU else 0,
        mem_mb=lambda wildcards: 16000 if SEGMENT_ON_GPU else 3000,
        runtime=120,
    conda:
        "../envs/segment.yaml"
    script:
        "../workflow_scripts/segment.py"


rule degrade:
    input:
        segments=f"{RESULTS}/pairs/segments/{{shard}}.parquet",
        masks=f"{RESULTS}/pairs/masks/{{shard}}",
    output:
        table=f"{RESULTS}/pairs/manifests/{{shard}}.parquet",
        images=directory(f"{RESULTS}/pairs/images/{{shard}}"),
        contact_sheet=report(
            f"{RESULTS}/pairs/contact/{{shard}}.png", category="3. Pairs", subcategory="contact sheets",
            caption="../report/pairs_contact.rst",
        ),
        rejects=f"{RESULTS}/pairs/rejects/degrade/{{shard}}.parquet",
        stats=f"{RESULTS}/pairs/stats/degrade/{{shard}}.json",
    params:
        cfg=PAIRS,
        seed=config["seed"],
        images=config["images"],
    threads: PAIRS["threads"]
    log:
        f"{RESULTS}/logs/pairs/degrade/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pairs/degrade/{{shard}}.tsv"
    resources:
        gpu=lambda wildcards: 1 if ALBEDO_ON_GPU else 0,
        mem_mb=lambda wildcards, threads: 1500 + 600 * threads,
        runtime=120,
    conda:
        "../envs/segment.yaml"
    script:
        "../workflow_scripts/degrade.py"


rule pairs_summary:
    input:
        stats=after_select(f"{RESULTS}/pairs/stats/{{rule}}/{{shard}}.json", rule=("segment", "degrade")),
        rejects=after_select(f"{RESULTS}/pairs/rejects/{{rule}}/{{shard}}.parquet", rule=("segment", "degrade")),
    output:
        stats=report(f"{RESULTS}/pairs/stats.json", category="3. Pairs", caption="../report/pairs.rst"),
        rejects=f"{RESULTS}/pairs/rejects.parquet",
    log:
        f"{RESULTS}/logs/pairs/pairs_summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/pairs/pairs_summary.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/base.yaml"
    script:
        "../workflow_scripts/gather.py"


TARGETS["pairs"] = [
    f"{RESULTS}/pairs/stats.json",
    f"{RESULTS}/pairs/rejects.parquet",
    after_select(f"{RESULTS}/pairs/manifests/{{shard}}.parquet"),
]
