"""relightflow.cluster: node sizes from sinfo / scontrol outputs, the per-rule check, and a real retry.

The Slurm outputs below were recorded on the local cluster (scripts/local-slurm.sh, Slurm 22.05: node `vm`,
8 CPUs, 19284 MB, 2 fake GPUs) with a second partition `rfsmall` made by `scontrol create
PartitionName=rfsmall Nodes=vm MaxCPUsPerNode=2 MaxMemPerNode=4000`, then updated with MaxTime /
MaxMemPerCPU (`sinfo --noheader --Node --format=%P|%N|%c|%m|%G`, `scontrol show partition NAME`). HETEROGENEOUS is
written by hand in the same format (a GPU partition with two node types and a CPU-only partition).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import SNAKEMAKE

from relightflow import cluster

SINFO_LOCAL = "debug*|vm|8|19284|gpu:fake:2\nrfsmall|vm|8|19284|gpu:fake:2\n"
SCONTROL_DEBUG = (
    "PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 PriorityTier=1 "
    "RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=8 "
    "TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED "
    "TRES=cpu=8,mem=19284M,node=1,billing=8\n"
)
SCONTROL_SMALL = (
    SCONTROL_DEBUG.replace("PartitionName=debug", "PartitionName=rfsmall")
    .replace("MaxCPUsPerNode=UNLIMITED", "MaxCPUsPerNode=2")
    .replace("MaxMemPerNode=UNLIMITED", "MaxMemPerNode=4000")
)
SCONTROL_SMALL_TIMED = SCONTROL_SMALL.replace("MaxTime=UNLIMITED", "MaxTime=1-12:00:00").replace(
    "MaxMemPerNode=4000", "MaxMemPerCPU=1500"
)
SCONTROL_DEBUG_LINES = """PartitionName=debug
   AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL
   AllocNodes=ALL Default=YES QoS=N/A
   DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO
   MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED
   Nodes=vm
   PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO
   OverTimeLimit=NONE PreemptMode=OFF
   State=UP TotalCPUs=8 TotalNodes=1 SelectTypeParameters=NONE
   JobDefaults=(null)
   DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED
   TRES=cpu=8,mem=19284M,node=1,billing=8

"""  # what `scontrol show partition debug` prints (without --oneliner)
HETEROGENEOUS = (
    "gpu*|g001|64|515000|gpu:a100:4(S:0-1)\n"
    "gpu*|g002|32|256000|gpu:a100:8(S:0-1)\n"
    "gpu*|g003|32|256000|gpu:a100:8(S:0-1)\n"
    "cpu|c001|128|1000000|(null)\n"
)


def fake_slurm(sinfo: str, partitions: dict[str, str], calls: list[list[str]] | None = None):
    """A `run` for cluster.query_node answering from recorded outputs (and logging each command)."""

    def run(cmd: list[str]) -> str:
        if calls is not None:
            calls.append(cmd)
        if cmd[0] == "sinfo":
            return sinfo
        return partitions[cmd[3]]

    return run


def test_recorded_default_partition_is_the_whole_node() -> None:
    calls: list[list[str]] = []
    node = cluster.read_node("", environ={}, run=fake_slurm(SINFO_LOCAL, {"debug": SCONTROL_DEBUG}, calls))
    assert (node.partition, node.cpus, node.mem_mb, node.gpus, node.runtime) == ("debug", 8, 19284, 2, None)
    assert [c[0] for c in calls] == ["sinfo", "scontrol"]  # one of each, whatever the job count
    assert cluster.parse_partition(SCONTROL_DEBUG_LINES) == cluster.parse_partition(SCONTROL_DEBUG)


def test_recorded_partition_limits_cut_the_node() -> None:
    run = fake_slurm(SINFO_LOCAL, {"rfsmall": SCONTROL_SMALL})
    node = cluster.read_node("rfsmall", environ={}, run=run)
    assert (node.cpus, node.mem_mb, node.gpus, node.runtime) == (2, 4000, 2, None)
    assert node.problem("train", "mem_mb", 64000) == (
        "rule train asks for mem_mb=64000 but partition rfsmall allows 4000 MB per node (MaxMemPerNode)"
    )
    assert node.problem("train", "cpus_per_task", 4).endswith("allows 2 CPUs per node (MaxCPUsPerNode)")
    assert (
        node.problem("train", "gpu", 4)
        == "rule train asks for gpu=4 but partition rfsmall's nodes have 2 GPUs"
    )
    assert node.problem("train", "mem_mb", 4000) is None  # exactly the node fits
    assert node.problem("train", "runtime", 10**6) is None  # MaxTime=UNLIMITED


def test_max_time_and_mem_per_cpu() -> None:
    node = cluster.read_node(
        "rfsmall", environ={}, run=fake_slurm(SINFO_LOCAL, {"rfsmall": SCONTROL_SMALL_TIMED})
    )
    assert node.runtime == 36 * 60
    assert node.mem_mb == 2 * 1500  # MaxMemPerCPU x the 2 CPUs a job may have on a node
    assert node.problem("select", "runtime", 2161, attempt=3) == (
        "rule select asks for runtime=2161 on attempt 3 but partition rfsmall allows 2160 min (MaxTime)"
    )


def test_heterogeneous_partition_is_sized_to_its_largest_node() -> None:
    parts = {"gpu": "PartitionName=gpu MaxCPUsPerNode=UNLIMITED MaxMemPerNode=UNLIMITED MaxTime=2-00:00:00"}
    node = cluster.read_node("", environ={}, run=fake_slurm(HETEROGENEOUS, parts))
    # one real node (8 GPUs, 32 CPUs), not the 64 CPUs of another: a group sized to both would fit none
    assert (node.partition, node.gpus, node.cpus, node.mem_mb, node.runtime) == ("gpu", 8, 32, 256000, 2880)
    cpu = cluster.read_node("cpu", environ={}, run=fake_slurm(HETEROGENEOUS, {"cpu": "PartitionName=cpu"}))
    assert (cpu.gpus, cpu.cpus) == (0, 128)
    assert cpu.problem("score_lighting", "gpu", 1).endswith("partition cpu's nodes have no GPUs")


def test_exported_sizes_win() -> None:
    env = {"RELIGHTFLOW_SLURM_NODE_MEM_MB": "3000"}
    node = cluster.read_node("debug", environ=env, run=fake_slurm(SINFO_LOCAL, {"debug": SCONTROL_DEBUG}))
    assert (node.cpus, node.mem_mb, node.gpus) == (8, 3000, 2)
    assert (
        node.problem("x", "mem_mb", 3001)
        == "rule x asks for mem_mb=3001 but RELIGHTFLOW_SLURM_NODE_MEM_MB=3000"
    )

    def no_slurm(cmd: list[str]) -> str:
        raise AssertionError(f"Slurm asked although every size is exported: {cmd}")

    env = {var: "4" for var in cluster.ENV_SIZES.values()}
    node = cluster.read_node("p", environ=env, run=no_slurm)
    assert (node.partition, node.cpus, node.mem_mb, node.gpus) == ("p", 4, 4, 4)


def test_no_slurm_falls_back_but_a_wrong_partition_fails(capsys) -> None:
    def missing(cmd: list[str]) -> str:
        raise cluster.SlurmQueryError(f"{cmd[0]}: not found")

    node = cluster.read_node("", environ={}, run=missing)
    assert (node.cpus, node.gpus, node.mem_mb) == (32, 8, 256000)
    assert "cannot read the node size from Slurm (sinfo: not found)" in capsys.readouterr().err
    with pytest.raises(
        cluster.UnknownPartition, match="partition gpus is not in sinfo .known: debug, rfsmall"
    ):
        cluster.read_node("gpus", environ={}, run=fake_slurm(SINFO_LOCAL, {}))


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("UNLIMITED", None), ("INFINITE", None), ("60", 60), ("1:00:00", 60), ("1-12", 2160),
     ("2-00:00:00", 2880), ("30:30", 31), ("1-00:01", 1441)],
)  # fmt: skip
def test_slurm_time_limits(text: str, minutes: int | None) -> None:
    assert cluster.parse_minutes(text) == minutes


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [("(null)", 0), ("gpu:fake:2", 2), ("gpu:4", 4), ("gpu:a100:4(S:0-1)", 4),
     ("gpu:a100:2(S:0),gpu:v100:1(S:1)", 3), ("mps:100,gpu:2", 2), ("shard:gpu:8", 0)],
)  # fmt: skip
def test_gpu_count(gres: str, gpus: int) -> None:
    assert cluster.gpu_count(gres) == gpus


RETRY_SNAKEFILE = """
from relightflow import cluster

onstart:
    cluster.enforce(workflow, cluster.Node("small", cpus=2, mem_mb=4000, gpus=0,
                    why={"mem_mb": "partition small allows 4000 MB per node (MaxMemPerNode)"}))

rule fits_on_retry:
    output: "a.txt"
    resources: mem_mb=lambda wildcards, attempt: 1000 * attempt
    shell: "test {resources.mem_mb} -ge 2000 && touch {output}"

rule outgrows_the_node:
    input: "a.txt"
    output: "b.txt"
    resources: mem_mb=lambda wildcards, attempt: 3000 * attempt
    shell: "exit 1"
"""


def test_attempt_scaling_still_retries_and_stops_above_the_node(tmp_path: Path) -> None:
    """Real Snakemake (local executor): attempt 2 of a rule gets more memory; one that would outgrow the node
    stops the run with the message instead of being submitted."""
    (tmp_path / "Snakefile").write_text(RETRY_SNAKEFILE)
    proc = subprocess.run(
        [SNAKEMAKE, "--cores", "1", "--retries", "1", "b.txt"], capture_output=True, text=True, cwd=tmp_path,
        timeout=300,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (tmp_path / "a.txt").exists(), text[-3000:]  # attempt 1 (1000 MB) failed, attempt 2 (2000 MB) ran
    assert (
        "rule outgrows_the_node asks for mem_mb=6000 on attempt 2 but partition small allows 4000 MB" in text
    )
    assert "Trying to restart job" in text


def test_a_rule_that_never_fits_stops_the_run_before_any_job(tmp_path: Path) -> None:
    snakefile = RETRY_SNAKEFILE.replace("3000 * attempt", "5000")
    (tmp_path / "Snakefile").write_text(snakefile)
    proc = subprocess.run(
        [SNAKEMAKE, "--cores", "1", "b.txt"], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "rule outgrows_the_node asks for mem_mb=5000 but partition small allows 4000 MB" in text
    assert not (tmp_path / "a.txt").exists(), "nothing ran: the check comes before the first job"


def test_group_longer_than_max_time() -> None:
    """A group's runtime is its layers' in series (Snakemake's estimate); above MaxTime it would pend."""
    node = cluster.read_node(
        "rfsmall", environ={}, run=fake_slurm(SINFO_LOCAL, {"rfsmall": SCONTROL_SMALL_TIMED})
    )

    def group(runtime: int, *rules: str) -> SimpleNamespace:
        jobs = [SimpleNamespace(rule=SimpleNamespace(name=r)) for r in rules]
        return SimpleNamespace(groupid="shard", jobs=jobs, resources={"runtime": runtime})

    found = cluster.group_problems([group(2160, "ingest"), group(3000, "ingest", "score_lighting")], node)
    assert found == [
        "group shard (2 jobs of ingest, score_lighting) needs runtime=3000 min (its jobs in series on one node) "
        "but partition rfsmall allows 2160 min (MaxTime): lower group-components or the rules' runtime"
    ]
