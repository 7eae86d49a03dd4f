# Captions: per shard, describe the lighting of each selected ORIGINAL image; the text becomes the edit
# instruction. Providers (captions.provider): vllm (offline batched, GPU, own conda env), openai (any
# OpenAI-compatible endpoint: `vllm serve`, OpenAI), mistral (the openai client with Mistral's API defaults),
# transformers (one local GPU), measured (no model). Answers are cached by content under cache_dir/captions,
# so a rerun never pays twice. Params carry only the captions section (+ cache dir), so a prompt/provider
# change reruns only captions.
from relightflow.captions import providers as caption_providers
from relightflow.captions.endpoints import check_endpoint

CAPTIONS = config["captions"]
# One table (relightflow.captions.providers.SPECS) gives each provider's conda env and job resources:
# gpu (vllm: captions.vllm.gpus, transformers 1), mem_mb, and api_requests = the endpoint client's
# concurrency, which profiles cap across all caption jobs (`resources: api_requests`).
CAPTION_SPEC = caption_providers.spec(CAPTIONS["provider"])
CAPTION_RESOURCES = caption_providers.job_resources(CAPTIONS)
if CAPTION_SPEC.api:
    check_endpoint(CAPTIONS[CAPTIONS["provider"]])  # a key never travels in clear text: fail at parse time


rule caption:
    input:
        selected=selected_shard,
        segments=f"{RESULTS}/pairs/segments/{{shard}}.parquet",
    output:
        table=f"{RESULTS}/captions/{{shard}}.parquet",
        rejects=f"{RESULTS}/captions/rejects/{{shard}}.parquet",
        stats=f"{RESULTS}/captions/stats/{{shard}}.json",
    params:
        cfg=CAPTIONS,
        cache_dir=config["cache_dir"],
        images=config["images"],
    log:
        f"{RESULTS}/logs/captions/caption/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/captions/caption/{{shard}}.tsv"
    resources:
        gpu=CAPTION_RESOURCES["gpu"],
        mem_mb=CAPTION_RESOURCES["mem_mb"],
        api_requests=CAPTION_RESOURCES["api_requests"],
        runtime=240,
    conda:
        f"../{CAPTION_SPEC.env}"
    script:
        "../workflow_scripts/caption.py"


rule caption_summary:
    input:
        stats=after_select(f"{RESULTS}/captions/stats/{{shard}}.json"),
        rejects=after_select(f"{RESULTS}/captions/rejects/{{shard}}.parquet"),
    output:
        stats=report(f"{RESULTS}/captions/stats.json", category="4. Captions", caption="../report/captions.rst"),
        rejects=f"{RESULTS}/captions/rejects.parquet",
    log:
        f"{RESULTS}/logs/captions/caption_summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/captions/caption_summary.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/base.yaml"
    script:
        "../workflow_scripts/gather.py"


TARGETS["captions"] = [
    after_select(f"{RESULTS}/captions/{{shard}}.parquet"),
    f"{RESULTS}/captions/stats.json",
    f"{RESULTS}/captions/rejects.parquet",
]
