"""Ingest as a library: listing, stable shard assignment, header probing, and the broken-input corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from broken_corpus import KEEP, make_corpus

from relightflow import config, ingest
from relightflow.images import load_rgb, path_id
from relightflow.manifest import read_table
from relightflow.testing import render_scene

CFG = config.section("ingest", min_side=16)


def _entries(*names: str) -> list[ingest.Entry]:
    return [ingest.Entry(n, 1, 1) for n in names]


def test_assignment_is_append_only() -> None:
    first = ingest.assign_shards([f"img{i:03d}.jpg" for i in range(10)], shard_size=4)
    assert sorted(set(first.values())) == [0, 1, 2]
    # new names sort before, between and after the old ones: old ones never move
    grown = [*first, "aaa.jpg", "img0045.jpg", "zzz.jpg", "zzz2.jpg"]
    second = ingest.assign_shards(grown, shard_size=4, previous=first)
    assert all(second[p] == s for p, s in first.items())
    assert [second[p] for p in ("aaa.jpg", "img0045.jpg", "zzz.jpg", "zzz2.jpg")] == [2, 2, 3, 3]


def test_removed_images_leave_other_shards_alone() -> None:
    first = ingest.assign_shards([f"{i}.jpg" for i in range(6)], shard_size=2)
    second = ingest.assign_shards(["0.jpg", "1.jpg", "4.jpg", "5.jpg"], shard_size=2, previous=first)
    assert second == {p: first[p] for p in second}


def test_plan_rewrites_only_changed_shard_lists(tmp_path: Path) -> None:
    entries = _entries(*(f"{i:02d}.jpg" for i in range(6)))
    shards = ingest.plan_shards(entries, 2, tmp_path)
    assert shards == ["00000", "00001", "00002"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "lists").iterdir()}
    changed = [*entries[:5], ingest.Entry("05.jpg", 2, 2)]  # one image modified
    os.utime(tmp_path / "lists" / "00000.json", ns=(1, 1))
    mtimes["00000.json"] = 1
    ingest.plan_shards(changed, 2, tmp_path)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "lists").iterdir()}
    assert after["00000.json"] == mtimes["00000.json"] and after["00001.json"] == mtimes["00001.json"]
    assert after["00002.json"] != mtimes["00002.json"]


def test_scan_folder_extensions_case_insensitive_and_links_once(tmp_path: Path) -> None:
    for name in ("a.JPG", "b.jpeg", "c.Png", "d.txt", "sub/e.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    os.symlink("a.JPG", tmp_path / "link.jpg")
    os.symlink(tmp_path / "sub", tmp_path / "dirlink")  # directory links are not followed
    names = [e.relpath for e in ingest.scan_folder(tmp_path, [".jpg", ".jpeg", "png", ".webp"])]
    assert names == ["a.JPG", "b.jpeg", "c.Png", "sub/e.webp"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".txt"])
def test_list_files(tmp_path: Path, suffix: str) -> None:
    (tmp_path / "imgs").mkdir()
    for n in ("x.jpg", "y.jpg"):
        (tmp_path / "imgs" / n).write_bytes(b"1")
    paths = ["imgs/x.jpg", "imgs/y.jpg", "imgs/x.jpg", "imgs/missing.jpg"]
    lst = tmp_path / f"list{suffix}"
    if suffix == ".csv":
        pd.DataFrame({"other": 1, "path": paths}).to_csv(lst, index=False)
    elif suffix == ".parquet":
        pd.DataFrame({"path": paths}).to_parquet(lst)
    else:
        lst.write_text("# comment\n" + "\n".join(paths) + "\n")
    entries = ingest.scan_list(lst, tmp_path)
    assert [e.relpath for e in entries] == ["imgs/missing.jpg", "imgs/x.jpg", "imgs/y.jpg"]
    assert entries[0].error.startswith("cannot stat")


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_exif_orientation_is_recorded_and_applied(tmp_path: Path, suffix: str) -> None:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    path = tmp_path / f"r.{suffix}"
    Image.fromarray(render_scene(size=64)[0][:, :40]).save(path, exif=exif.tobytes())
    meta = ingest.probe_image(path, min_side=8)
    assert (meta["width"], meta["height"], meta["exif_orientation"]) == (40, 64, 6)
    assert (meta["oriented_width"], meta["oriented_height"]) == (64, 40)
    assert load_rgb(path).shape == (40, 64, 3)


def _ingest_corpus(root: Path, out: Path, cfg: dict) -> None:
    """Plan + ingest the corpus in a subprocess; as root, without the capabilities that bypass file
    permissions (``setpriv``), so that a chmod-000 file is really unreadable."""
    code = (
        "import json, sys; from relightflow import ingest;"
        "root, out, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]);"
        "shards = ingest.plan_shards(ingest.scan_folder(root), 100, out + '/state');"
        "from relightflow.shards import ShardOutputs, run_shard;"
        "[run_shard(ingest.IngestStage(f'{out}/state/lists/{s}.json', root, cfg), s,"
        " ShardOutputs(f'{out}/m{s}.parquet', f'{out}/r{s}.parquet', f'{out}/s{s}.json')) for s in shards]"
    )
    cmd = [sys.executable, "-c", code, str(root), str(out), json.dumps(cfg)]
    if os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *cmd]
    subprocess.run(cmd, check=True, timeout=120)


@pytest.fixture
def open_tmp(tmp_path: Path):
    """A temp dir whose unreadable files are made removable again afterwards."""
    yield tmp_path
    for p in tmp_path.rglob("*"):
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_broken_corpus_every_image_kept_or_rejected(open_tmp: Path) -> None:
    root, out = open_tmp / "images", open_tmp / "out"
    expected = make_corpus(root)
    out.mkdir()
    _ingest_corpus(root, out, CFG)
    kept = pd.concat([read_table(p) for p in sorted(out.glob("m*.parquet"))])
    rejects = pd.concat([read_table(p) for p in sorted(out.glob("r*.parquet"))])
    stats = [json.loads(p.read_text()) for p in out.glob("s*.json")]
    n_in = sum(s["n_in"] for s in stats)
    assert n_in == len(expected) == len(kept) + len(rejects)
    assert set(kept["relpath"]) == {p for p, o in expected.items() if o == KEEP}
    by_path = {os.path.relpath(p, root): r for p, r in zip(rejects["path"], rejects["reason"], strict=True)}
    for rel, outcome in expected.items():
        if outcome != KEEP:
            shown = ingest.display_path(rel)
            assert by_path[shown].startswith(tuple(outcome.split("|"))), (rel, by_path[shown])
    assert (rejects["stage"] == "ingest").all()
    modes = dict(zip(kept["relpath"], kept["mode"], strict=True))
    assert (
        modes["ok/cmyk.jpg"] == "CMYK" and modes["ok/palette.png"] == "P" and modes["ok/rgba.png"] == "RGBA"
    )
    for rel in kept["relpath"]:  # every kept image decodes to RGB uint8
        assert load_rgb(root / rel).ndim == 3


def test_content_ids_reject_duplicate_bytes(open_tmp: Path) -> None:
    root, out = open_tmp / "images", open_tmp / "out"
    make_corpus(root)
    out.mkdir()
    _ingest_corpus(root, out, {**CFG, "id_from": "content"})
    rejects = pd.concat([read_table(p) for p in out.glob("r*.parquet")])
    dup = rejects[rejects["path"].str.endswith("plain.jpg") & rejects["reason"].str.startswith("duplicate")]
    assert len(dup) == 1


def test_path_id_is_stable() -> None:
    assert path_id("a/b.jpg") == path_id("a/b.jpg") != path_id("a/c.jpg")
    assert len(path_id("a/b.jpg")) == 16
