# Ingest: one job per shard probes every listed image (header, size, decodability, EXIF orientation) and
# writes the shard manifest; a gather merges rejects and stats.


rule ingest:
    input:
        listing=shard_list,
        demo=demo_images,
    output:
        table=f"{RESULTS}/ingest/manifests/{{shard}}.parquet",
        rejects=f"{RESULTS}/ingest/rejects/{{shard}}.parquet",
        stats=f"{RESULTS}/ingest/stats/{{shard}}.json",
    params:
        root=rfw.input_root(config),
        cfg=config["ingest"],
        images=config["images"],
    log:
        f"{RESULTS}/logs/ingest/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest/{{shard}}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/base.yaml"
    script:
        "../workflow_scripts/ingest.py"


rule ingest_summary:
    input:
        stats=expand(f"{RESULTS}/ingest/stats/{{shard}}.json", shard=SHARDS),
        rejects=expand(f"{RESULTS}/ingest/rejects/{{shard}}.parquet", shard=SHARDS),
    output:
        stats=report(f"{RESULTS}/ingest/stats.json", category="1. Ingest", caption="../report/ingest.rst"),
        rejects=f"{RESULTS}/ingest/rejects.parquet",
    log:
        f"{RESULTS}/logs/ingest_summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest_summary.tsv"
    conda:
        "../envs/base.yaml"
    script:
        "../workflow_scripts/gather.py"


TARGETS["ingest"] = [f"{RESULTS}/ingest/rejects.parquet", f"{RESULTS}/ingest/stats.json"]
