"""Shared test setup: offline hubs, one thread per test process, and workflow-run helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """The command line that runs the repository's workflow in ``workdir``."""
    return [
        SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
        "--scheduler", "greedy", "--rerun-triggers", "mtime", "params", "input", "software-env", *args,
    ]  # fmt: skip


def run_snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: int = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the repository's workflow in ``workdir`` (a real Snakemake subprocess)."""
    cmd = snakemake_command(workdir, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def jobs_run(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule from Snakemake's "Job stats" table (dry run or real run)."""
    text = proc.stdout + proc.stderr
    if "Job stats:" not in text:
        return {}
    table = text.split("Job stats:", 1)[1].splitlines()[3:]
    counts: dict[str, int] = {}
    for line in table:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A temporary Snakemake working directory."""
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The demo profile's workflow run once (every stage, CPU) into a temporary folder, plus its report."""
    workdir = tmp_path_factory.mktemp("demo")
    demo = ["--configfile", str(REPO / "profiles/demo/demo.yaml")]
    # one core: the other xdist worker keeps the second busy, and two torch threads on a shared core made
    # the demo's training 3-4x slower (measured); the metrics are the same to 5 digits at 1 or 2 threads
    run_snakemake(workdir, *demo, "--cores", "1", timeout=1800)
    run_snakemake(workdir, *demo, "--report", "report.html", timeout=600)
    return workdir


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium")
    if not path:
        pytest.skip("Debian chromium is not installed (scripts/install.sh installs it)")
    return path


# Files that take minutes (measured with --durations), longest first: xdist (--dist loadfile) hands files to
# workers in collection order, so starting these first keeps the two workers' loads even.
SLOW_FILES = (
    "test_demo.py", "test_config_matrix.py", "test_train_workflow.py", "test_workflow_ingest.py",
    "test_captions_workflow.py", "test_fault_injection.py", "test_filter_workflow.py", "test_slurm.py",
    "test_hostile_inputs.py",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise
