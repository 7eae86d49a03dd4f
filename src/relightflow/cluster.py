"""Size Slurm jobs to one node of the partition in use (``profiles/slurm``).

The profile calls :func:`node_size` once per Snakemake invocation: one ``sinfo`` (every node's CPUs,
memory and GPUs, and the default partition) and one ``scontrol show partition`` (the partition's own
limits: MaxCPUsPerNode, MaxMemPerNode / MaxMemPerCPU, MaxTime). The node is the partition's largest
(most GPUs, then CPUs, then memory), cut down to those limits. ``RELIGHTFLOW_SLURM_NODE_CPUS`` /
``_NODE_GPUS`` / ``_NODE_MEM_MB`` win when set; with all three set Slurm is not asked at all.

The profile hands the node to Snakemake as ``--cores`` / ``--resources``: threads above it are lowered
and a group's jobs run side by side up to it and in series beyond. A request that no node can give
(memory, GPUs, ``cpus_per_task``, runtime above MaxTime) would pend forever in Slurm; :func:`enforce`
makes it an error naming the rule and the resource, before any job is submitted, and again when a
retry's ``attempt``-scaled request grows past the node.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

ENV_PARTITION = "RELIGHTFLOW_SLURM_PARTITION"
ENV_SIZES = {
    "cpus": "RELIGHTFLOW_SLURM_NODE_CPUS",
    "gpus": "RELIGHTFLOW_SLURM_NODE_GPUS",
    "mem_mb": "RELIGHTFLOW_SLURM_NODE_MEM_MB",
}
# Used when Slurm cannot be asked (no sinfo here, e.g. a dry run on a laptop) and no size is exported.
FALLBACK = {"cpus": 32, "gpus": 8, "mem_mb": 256000}
SINFO = ["sinfo", "--noheader", "--Node", "--format=%P|%N|%c|%m|%G"]
UNLIMITED = {"UNLIMITED", "INFINITE", "NONE", ""}
# Job resources that must fit one node (Snakemake resource name -> Node field). Threads are not here:
# Snakemake lowers them to --cores itself.
CHECKED = {"mem_mb": "mem_mb", "gpu": "gpus", "gpus": "gpus", "cpus_per_task": "cpus", "runtime": "runtime"}
UNITS = {"cpus": "CPUs", "gpus": "GPUs", "mem_mb": "MB"}
HINT = (
    "Lower the request (the rule's config key, or set-resources in your profile) or use a partition "
    f"with bigger nodes ({ENV_PARTITION}); how jobs are sized: docs/cluster.md"
)


class SlurmQueryError(RuntimeError):
    """sinfo / scontrol could not be run (no Slurm here, controller down): the fallback size is used."""


class UnknownPartition(ValueError):
    """The partition asked for is not in ``sinfo`` (a typo in RELIGHTFLOW_SLURM_PARTITION): no fallback."""


@dataclass(frozen=True)
class NodeConfig:
    """One node as ``sinfo`` lists it."""

    name: str
    cpus: int
    mem_mb: int
    gpus: int

    def key(self) -> tuple[int, int, int]:
        return (self.gpus, self.cpus, self.mem_mb)


@dataclass(frozen=True)
class Node:
    """What one job (or one group of jobs) may ask for in ``partition``, and why each limit holds."""

    partition: str
    cpus: int
    mem_mb: int
    gpus: int
    runtime: int | None = None  # minutes (the partition's MaxTime); None: no limit
    # Node field -> where its limit comes from: "partition debug's nodes have 8 CPUs"
    why: Mapping[str, str] = field(default_factory=dict)

    def problem(self, rule: str, resource: str, value: Any, attempt: int = 1) -> str | None:
        """The error for ``rule`` asking ``resource=value`` when it exceeds this node, else None."""
        limit_field = CHECKED.get(resource)
        if limit_field is None or not isinstance(value, int) or isinstance(value, bool):
            return None
        limit = getattr(self, limit_field)
        if limit is None or value <= limit:
            return None
        on_attempt = f" on attempt {attempt}" if attempt > 1 else ""
        why = self.why.get(limit_field, f"one node of partition {self.partition} has {limit} ({limit_field})")
        return f"rule {rule} asks for {resource}={value}{on_attempt} but {why}"


def parse_int(text: str) -> int | None:
    """The leading integer of a Slurm number ("19284", "19284+", "4000M"), None for UNLIMITED and the like."""
    match = re.match(r"\s*(\d+)", text)
    return int(match.group(1)) if match else None


def gpu_count(gres: str) -> int:
    """GPUs in a ``sinfo %G`` / ``Gres=`` field: "gpu:a100:4(S:0-1),gpu:v100:2" -> 6, "(null)" -> 0."""
    return sum(int(n) for n in re.findall(r"(?:^|,)gpu(?::[A-Za-z0-9_.\-]+)?:(\d+)", gres))


def parse_minutes(text: str) -> int | None:
    """A Slurm time limit in minutes ("60", "1:00:00", "2-00:00:00", "1-12"); None when unlimited."""
    text = text.strip()
    if text.upper() in UNLIMITED:
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:  # hours:minutes:seconds
        hours, minutes, seconds = parts
    else:  # minutes[:seconds]
        hours, minutes, seconds = 0, parts[0], (parts + [0])[1]
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


def parse_sinfo(text: str) -> tuple[str | None, dict[str, list[NodeConfig]]]:
    """The default partition and each partition's nodes from ``sinfo --Node --format=%P|%N|%c|%m|%G``."""
    default, partitions = None, {}
    for line in text.splitlines():
        if not line.strip():
            continue
        partition, name, cpus, mem, gres = line.strip().split("|", 4)
        if partition.endswith("*"):
            partition = default = partition[:-1]
        node = NodeConfig(name, parse_int(cpus) or 0, parse_int(mem) or 0, gpu_count(gres))
        partitions.setdefault(partition, []).append(node)
    return default, partitions


def parse_partition(text: str) -> dict[str, str]:
    """``scontrol show partition NAME`` (one or several lines) as a Key -> value mapping."""
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def size_node(partition: str, nodes: list[NodeConfig], limits: Mapping[str, str]) -> Node:
    """The largest node of ``partition`` cut down to the partition's per-node limits."""
    node = max(nodes, key=NodeConfig.key)
    cpus, mem_mb, gpus = node.cpus, node.mem_mb, node.gpus
    why = {
        "cpus": f"partition {partition}'s nodes have {cpus} CPUs",
        "mem_mb": f"partition {partition}'s nodes have {mem_mb} MB",
        "gpus": f"partition {partition}'s nodes have {gpus or 'no'} GPUs",
    }
    max_cpus = parse_int(limits.get("MaxCPUsPerNode", ""))
    if max_cpus is not None and max_cpus < cpus:
        cpus = max_cpus
        why["cpus"] = f"partition {partition} allows {cpus} CPUs per node (MaxCPUsPerNode)"
    max_mem = parse_int(limits.get("MaxMemPerNode", ""))
    if max_mem is not None and max_mem < mem_mb:
        mem_mb = max_mem
        why["mem_mb"] = f"partition {partition} allows {mem_mb} MB per node (MaxMemPerNode)"
    per_cpu = parse_int(limits.get("MaxMemPerCPU", ""))
    if per_cpu is not None and per_cpu * cpus < mem_mb:
        mem_mb = per_cpu * cpus
        why["mem_mb"] = f"partition {partition} allows {per_cpu} MB per CPU x {cpus} CPUs (MaxMemPerCPU)"
    runtime = parse_minutes(limits.get("MaxTime", "UNLIMITED"))
    if runtime is not None:
        why["runtime"] = f"partition {partition} allows {runtime} min (MaxTime)"
    return Node(partition, cpus, mem_mb, gpus, runtime, why)


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SlurmQueryError(f"{cmd[0]}: {err}") from err
    if proc.returncode != 0:
        raise SlurmQueryError(f"{' '.join(cmd)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout


def query_node(partition: str = "", run: Callable[[list[str]], str] = _run) -> Node:
    """Ask Slurm (one sinfo, one scontrol) for the node of ``partition`` (empty: the default partition)."""
    default, partitions = parse_sinfo(run(SINFO))
    name = partition or default
    if not name:
        raise SlurmQueryError(f"no default partition in sinfo; set {ENV_PARTITION}")
    if name not in partitions:
        raise UnknownPartition(f"partition {name} is not in sinfo (known: {', '.join(sorted(partitions))})")
    limits = parse_partition(run(["scontrol", "show", "partition", name]))
    return size_node(name, partitions[name], limits)


def read_node(
    partition: str = "", environ: Mapping[str, str] = os.environ, run: Callable[[list[str]], str] = _run
) -> Node:
    """The node jobs are sized to: exported sizes win, the rest comes from Slurm (or the fallback)."""
    given = {key: int(environ[var]) for key, var in ENV_SIZES.items() if environ.get(var, "").strip()}
    if len(given) == len(ENV_SIZES):
        node = Node(partition, **given, why={})
    else:
        try:
            node = query_node(partition, run)
        except SlurmQueryError as err:
            print(
                f"relightflow.cluster: cannot read the node size from Slurm ({err}); assuming "
                f"{FALLBACK['cpus']} CPUs, {FALLBACK['gpus']} GPUs, {FALLBACK['mem_mb']} MB per node. "
                f"Export {', '.join(ENV_SIZES.values())} to set it.",
                file=sys.stderr,
            )
            node = Node(
                partition,
                **FALLBACK,
                why={k: f"the assumed node has {v} {UNITS[k]}" for k, v in FALLBACK.items()},
            )
        node = replace(node, **given)
    why = dict(node.why)
    for key, value in given.items():
        why[key] = f"{ENV_SIZES[key]}={value}"
    return replace(node, why=why)


_ACTIVE: list[Node] = []


@functools.cache
def node_size(partition: str = "") -> Node:
    """:func:`read_node` once per process; the node also becomes :func:`active_node` (see :func:`enforce`)."""
    node = read_node(partition)
    _ACTIVE[:] = [node]
    return node


def active_node() -> Node | None:
    """The node the profile sized this run to, or None when no profile asked (local runs)."""
    return _ACTIVE[0] if _ACTIVE else None


# --- Snakemake side (needs a Snakemake workflow object; imported lazily) --------------------------------


class _Guard:
    """Checks evaluated requests against ``node``: raises, or records while :func:`enforce` surveys the DAG."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.found: dict[str, None] | None = None  # distinct problems, while surveying

    def check(self, rule: str, resource: str, value: Any, attempt: int) -> None:
        from snakemake.exceptions import ResourceValidationError

        problem = self.node.problem(rule, resource, value, attempt)
        if problem is None:
            return
        if self.found is None:
            raise ResourceValidationError(f"{problem}\n{HINT}")
        self.found[problem] = None

    def wrap(self, resource: Any, rule: str) -> Any:
        """``resource`` (a snakemake Resource) evaluated as before, then checked."""
        from snakemake.resources import Resource

        def evaluate(wildcards: Any, **aux: Any) -> Any:
            value = resource.evaluate(wildcards, **aux).value
            self.check(rule, resource.name, value, aux.get("attempt", 1))
            return value

        return Resource(resource.name, evaluate, raw=resource.raw)


def _on_login_node(workflow: Any, rule: Any) -> bool:
    """True for `localrules` of a cluster run: they run in the main process, not in a Slurm job."""
    return workflow.is_local(rule) and not workflow.local_exec


def guard_rules(workflow: Any, node: Node) -> _Guard:
    """Check every submitted rule's memory, GPU, cpus_per_task and runtime requests against ``node``."""
    guard = _Guard(node)
    for rule in workflow.rules:
        if _on_login_node(workflow, rule):
            continue
        for name in CHECKED:
            resource = rule.resources.get(name)
            if resource is not None:
                rule.resources[name] = guard.wrap(resource, rule.name)
    return guard


def survey(jobs: Iterable[Any], guard: _Guard) -> list[str]:
    """Every distinct "rule X asks for ..." problem of ``jobs`` (snakemake Jobs), evaluated afresh."""
    guard.found = {}
    try:
        for job in jobs:
            job.rule.expand_resources(job.wildcards_dict, job.input, job.attempt)
        return list(guard.found)
    finally:
        guard.found = None


def group_problems(groups: Iterable[Any], node: Node) -> list[str]:
    """Groups whose jobs, run in series on one node, need more time than the partition's MaxTime."""
    found: dict[str, None] = {}
    for group in groups:
        runtime = group.resources.get("runtime")
        if node.runtime is None or not isinstance(runtime, int) or runtime <= node.runtime:
            continue
        rules = ", ".join(sorted({job.rule.name for job in group.jobs}))
        message = (
            f"group {group.groupid} ({len(group.jobs)} jobs of {rules}) needs runtime={runtime} min (its jobs "
            f"in series on one node) but {node.why.get('runtime', f'MaxTime is {node.runtime} min')}: lower "
            "group-components or the rules' runtime"
        )
        found[message] = None
    return list(found)


def enforce(workflow: Any, node: Node | None = None) -> None:
    """Fail the run, before any submission, when a job of its DAG cannot fit one node; guard retries.

    Called from the workflow's ``onstart`` handler in the main Snakemake process. Does nothing when no
    profile sized a node (:func:`active_node` is None) or inside a spawned job.
    """
    from snakemake.exceptions import WorkflowError

    from relightflow.workflow import is_remote_job

    node = node or active_node()
    if node is None or is_remote_job(workflow):
        return
    guard = guard_rules(workflow, node)
    dag = workflow.dag
    jobs = [job for job in dag.needrun_jobs() if not _on_login_node(workflow, job.rule)]
    found = survey(jobs, guard)
    if not found:
        groups = {id(g): g for job in jobs if (g := dag.get_job_group(job)) is not None}
        found = group_problems(groups.values(), node)
    if found:
        raise WorkflowError("\n".join([*found, HINT]))
