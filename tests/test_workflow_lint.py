"""Static checks of the workflow: Snakemake's linter finds nothing; every rule has log and benchmark."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import REPO, SNAKEMAKE


def test_snakemake_lint_is_clean(tmp_path) -> None:
    proc = subprocess.run(
        [SNAKEMAKE, "--lint", "--snakefile", str(REPO / "Snakefile"), "--configfile",
         str(REPO / "profiles/demo/demo.yaml"), "--directory", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


@pytest.mark.parametrize("smk", sorted((REPO / "rules").glob("*.smk")), ids=lambda p: p.name)
def test_every_rule_has_log_benchmark_and_conda(smk) -> None:
    text = smk.read_text()
    blocks = re.split(r"^(?:rule|checkpoint) ", text, flags=re.M)[1:]
    for block in blocks:
        name = block.split(":", 1)[0]
        for directive in ("log:", "benchmark:", "conda:"):
            assert f"    {directive}" in block, f"{smk.name}: rule {name} has no {directive}"


# per-shard outputs of the stages downstream of the `select` checkpoint
DOWNSTREAM = re.compile(r'expand\(\s*f?"\{RESULTS\}/(pairs|captions|dataset)/[^"]*\{\{shard\}\}[^)]*shard=SHARDS')


@pytest.mark.parametrize("smk", sorted((REPO / "rules").glob("*.smk")), ids=lambda p: p.name)
def test_downstream_shard_files_are_asked_for_after_select(smk) -> None:
    """Per-shard files downstream of the checkpoint go through ``after_select``: expanded directly, each of
    their jobs queries the pending checkpoint, and a dry run costs O(shards^2) (1M images: 184 s of CPU)."""
    assert not DOWNSTREAM.search(smk.read_text()), f"{smk.name}: use after_select(...) for these files"
