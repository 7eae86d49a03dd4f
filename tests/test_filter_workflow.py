"""Real Snakemake runs of ingest -> score_lighting -> select (checkpoint) -> a per-shard downstream rule.

Proves what reruns: a prompt change reruns scoring + selection (not ingest); a split change reruns only
``select`` (per-shard selection files stay byte-identical, so nothing downstream); a new image reruns only
its own shard downstream.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from skimage import data

from relightflow.images import save_image
from relightflow.testing.tiny_clip import save_tiny_clip

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = f"""
configfile: "config.yaml"
include: "{REPO}/rules/common.smk"
include: "{REPO}/rules/ingest.smk"
include: "{REPO}/rules/filter.smk"
rule all:
    input: all_targets, expand("results/down/{{shard}}.txt", shard=SHARDS)
rule downstream:
    input: selected_shard
    output: "results/down/{{shard}}.txt"
    log: "results/logs/down/{{shard}}.log"
    shell: "wc -c {{input}} > {{output}}"
"""


def _run(workdir: Path) -> Counter:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [shutil.which("snakemake", path=env["PATH"]), "-c2", "--scheduler", "greedy"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", proc.stderr))


def _edit(workdir: Path, change) -> None:
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    change(cfg)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture
def workdir(tmp_path):
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field"):
        save_image(tmp_path / "images" / f"{name}.jpg", getattr(data, name)())
    model, checkpoint = save_tiny_clip(tmp_path / "model")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["input"]["root"] = "images"
    cfg["shards"]["size"] = 3
    cfg["stages"] = ["ingest", "filter"]
    cfg["filter"]["clip"] |= {"model": model, "pretrained": checkpoint, "num_workers": 0, "batch_size": 4}
    cfg["filter"]["clip"]["prompts"] = [
        ["Bright photo.", "Dark photo."],
        ["a well lit photo", "a poorly lit photo"],
    ]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    return tmp_path


def test_reruns_are_limited_to_what_changed(workdir):
    first = _run(workdir)
    assert first["score_lighting"] == 2 and first["select"] == 1 and first["downstream"] == 2
    assert (workdir / "results/filter/contact_sheet.png").exists()

    _edit(
        workdir,
        lambda c: c["filter"]["clip"]["prompts"].append(["a softly lit photo", "a harshly lit photo"]),
    )
    prompts = _run(workdir)
    assert prompts["score_lighting"] == 2 and prompts["select"] == 1
    assert prompts["ingest"] == 0

    _edit(workdir, lambda c: c["filter"].update(splits={"train": 0.5, "val": 0.25, "test": 0.25}))
    assert _run(workdir) == Counter({"select": 1})

    save_image(workdir / "images" / "zz_new.jpg", data.coffee()[::-1])
    grown = _run(workdir)
    assert grown["ingest"] == 1 and grown["score_lighting"] == 1 and grown["downstream"] == 1
    assert (workdir / "results/down/00002.txt").exists()
