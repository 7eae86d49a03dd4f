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
