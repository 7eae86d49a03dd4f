# Captions: per shard, describe the lighting of each selected ORIGINAL image; the text becomes the edit
# instruction. Providers (captions.provider): vllm (offline batched, GPU, own conda env), openai (any
# OpenAI-compatible endpoint: `vllm serve`, OpenAI, Mistral), transformers (one local GPU), measured (no
# model). Answers are cached by content under cache_dir/captions, so a rerun never pays twice.
# Params carry only the captions section (+ cache dir), so a prompt/provider change reruns only captions.

CAPTIONS = config["captions"]
CAPTION_PROVIDER = CAPTIONS["provider"]
CAPTION_ENV = "../envs/vlm.yaml" if CAPTION_PROVIDER == "vllm" else "../envs/base.yaml"
# GPUs per caption job: vLLM uses captions.vllm.gpus (its tensor-parallel size), transformers one, others none
CAPTION_GPUS = {"vllm": CAPTIONS["vllm"]["gpus"], "transformers": 1}.get(CAPTION_PROVIDER, 0)
CAPTION_MEM_MB = {"vllm": 64000, "transformers": 32000}.get(CAPTION_PROVIDER, 4000)




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
        gpu=CAPTION_GPUS,
        mem_mb=CAPTION_MEM_MB,
        runtime=240,
    conda:
        CAPTION_ENV
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
