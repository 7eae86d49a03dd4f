"""Ingest: list the input, assign images to stable shards, probe each image's header.

The listing runs when the workflow is parsed (so shard ids are known up front and shard jobs can be
grouped on a cluster). It is cached as an assignment table: an image keeps its shard forever; new
images fill the last shard, then open new ones; so adding images never moves existing ones. Each
shard's list file (path, size, mtime) is rewritten only when its content changes, which is what makes
Snakemake rerun exactly the shards whose images changed.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import ExifTags, Image

from relightflow.images import ImageError, content_id, open_image, path_id
from relightflow.manifest import Reject, StageStats, write_json, write_rejects, write_table, write_text

log = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MANIFEST_COLUMNS = [
    "image_id", "path", "relpath", "width", "height", "format", "mode", "n_bytes", "exif_orientation",
    "oriented_width", "oriented_height",
]  # fmt: skip
ORIENTATION_TAG = ExifTags.Base.Orientation


@dataclass(frozen=True)
class Entry:
    """One listed input file: its path relative to the root, size and mtime, or why it can't be read."""

    relpath: str
    size: int = -1
    mtime_ns: int = 0
    error: str = ""

    def to_json(self) -> str:
        return json.dumps([self.relpath, self.size, self.mtime_ns, self.error])

    @classmethod
    def from_json(cls, line: str) -> Entry:
        relpath, size, mtime_ns, error = json.loads(line)
        return cls(relpath, size, mtime_ns, error)


def display_path(path: str) -> str:
    """A printable, UTF-8-safe version of a path that may hold undecodable bytes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _stat_entry(root: Path, relpath: str) -> Entry:
    try:
        st = os.stat(root / relpath)
    except OSError as e:
        reason = "symlink loop" if e.errno == 40 else f"cannot stat: {e.strerror}"
        return Entry(relpath, error=reason)
    if not stat.S_ISREG(st.st_mode):
        return Entry(relpath, error="not a regular file")
    return Entry(relpath, st.st_size, st.st_mtime_ns)


def scan_folder(root: str | os.PathLike, extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> list[Entry]:
    """Recursively list files under ``root`` whose suffix matches (case-insensitive).

    Symlinked files are kept once: a link to a file already listed under the root is skipped (no double
    counting); directory symlinks are not followed (no loops); a broken or looping link is listed with
    its error so ingest records it as a reject.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input.root is not a folder: {root}")
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    entries: list[Entry] = []
    seen_real: dict[str, str] = {}
    links: list[tuple[str, str]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            items = list(os.scandir(folder))
        except OSError as e:
            log.warning("cannot list %s: %s", folder, e)
            continue
        for item in items:
            if item.is_dir(follow_symlinks=False):
                stack.append(Path(item.path))
                continue
            if os.path.splitext(item.name)[1].lower() not in exts:
                continue
            rel = os.path.relpath(item.path, root).replace(os.sep, "/")
            if item.is_symlink():
                links.append((rel, item.path))
                continue
            seen_real[os.path.realpath(item.path)] = rel
            entries.append(_stat_entry(root, rel))
    for rel, full in links:
        real = os.path.realpath(full)
        if real in seen_real:
            log.info(
                "skipping %s: a link to %s, already listed", display_path(rel), display_path(seen_real[real])
            )
            continue
        seen_real[real] = rel
        entries.append(_stat_entry(root, rel))
    return sorted(entries, key=lambda e: e.relpath)


def read_path_list(list_file: str | os.PathLike, column: str = "path") -> list[str]:
    """Paths from a CSV / Parquet (column ``column``, else the first) or TXT (one per line) file."""
    p = Path(list_file)
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        df = pd.read_parquet(p)
    elif suffix in (".csv", ".tsv"):
        df = pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    else:
        lines = p.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    col = column if column in df.columns else df.columns[0]
    return [str(v).strip() for v in df[col].tolist() if str(v).strip()]


def scan_list(list_file: str | os.PathLike, root: str | os.PathLike, column: str = "path") -> list[Entry]:
    """List the files named in a list file, relative to ``root``; duplicates counted once."""
    root = Path(root)
    out: dict[str, Entry] = {}
    for raw in read_path_list(list_file, column):
        full = Path(raw) if os.path.isabs(raw) else root / raw
        try:
            rel = os.path.relpath(full, root).replace(os.sep, "/")
        except ValueError:
            rel = raw
        if rel not in out:
            out[rel] = _stat_entry(root, rel)
    return sorted(out.values(), key=lambda e: e.relpath)


def assign_shards(
    entries: Iterable[Entry], shard_size: int, previous: dict[str, int] | None = None
) -> dict[str, int]:
    """Stable, append-only shard assignment: known paths keep their shard, new ones fill the last."""
    previous = previous or {}
    relpaths = [e.relpath for e in entries]
    assignment = {p: previous[p] for p in relpaths if p in previous}
    counts: dict[int, int] = {}
    for s in assignment.values():
        counts[s] = counts.get(s, 0) + 1
    current = max(previous.values(), default=0)
    for p in sorted(p for p in relpaths if p not in assignment):
        while counts.get(current, 0) >= shard_size:
            current += 1
        assignment[p] = current
        counts[current] = counts.get(current, 0) + 1
    return assignment


def shard_name(index: int) -> str:
    return f"{index:05d}"


def plan_shards(entries: Sequence[Entry], shard_size: int, state_dir: str | os.PathLike) -> list[str]:
    """Assign ``entries`` to shards (reusing the cached assignment) and write one list file per shard.

    Returns the sorted shard ids. List files are ``<state_dir>/lists/<shard>.jsonl``; they are rewritten
    only when their content changes. The assignment cache is ``<state_dir>/assignment.json``.
    """
    state = Path(state_dir)
    cache = state / "assignment.json"
    previous: dict[str, int] = {}
    if cache.exists():
        data = json.loads(cache.read_text(encoding="utf-8"))
        if data.get("shard_size") == shard_size:
            previous = data["assignment"]
        else:
            log.warning(
                "shards.size changed (%s -> %s): reassigning all shards", data.get("shard_size"), shard_size
            )
    assignment = assign_shards(entries, shard_size, previous)
    by_shard: dict[str, list[Entry]] = {}
    for e in entries:
        by_shard.setdefault(shard_name(assignment[e.relpath]), []).append(e)
    shards = sorted(by_shard)
    for shard in shards:
        text = "".join(e.to_json() + "\n" for e in by_shard[shard])
        write_text(state / "lists" / f"{shard}.jsonl", text, only_if_changed=True)
    lists = state / "lists"
    for stale in lists.glob("*.jsonl"):
        if stale.stem not in by_shard:
            stale.unlink()
    write_json(cache, {"shard_size": shard_size, "assignment": assignment}, only_if_changed=True)
    return shards


def cached_shards(state_dir: str | os.PathLike) -> list[str]:
    """Shard ids from list files already written by :func:`plan_shards` (no rescan)."""
    return sorted(p.stem for p in (Path(state_dir) / "lists").glob("*.jsonl"))


def read_shard_list(path: str | os.PathLike) -> list[Entry]:
    with open(path, encoding="utf-8") as f:
        return [Entry.from_json(line) for line in f if line.strip()]


def _exif_orientation(img: Image.Image) -> int:
    """EXIF orientation (1-8) read from the header only; PNG's getexif() would decode the whole image."""
    try:
        if img.format == "PNG":
            raw = img.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = img.getexif()
        return int(exif.get(ORIENTATION_TAG, 1) or 1)
    except Exception:  # malformed EXIF must not reject an otherwise good image
        return 1


def probe_image(
    path: str | os.PathLike, max_pixels: int, min_side: int, verify: bool = True
) -> dict[str, Any]:
    """Read an image's header and check it; raise :class:`ImageError` with a reason otherwise.

    With ``verify``, PIL's structural check runs on a fresh handle (it must come first), then a cheap
    decode (JPEG at 1/8 scale in the DCT domain, other formats fully) catches truncated data.
    """
    if verify:
        img = open_image(path, max_pixels)
        try:
            img.verify()
        except Exception as e:
            raise ImageError(f"corrupt image: {e}") from e
        finally:
            img.close()
    img = open_image(path, max_pixels)
    try:
        w, h = img.size
        fmt, mode = img.format or "", img.mode
        orientation = _exif_orientation(img)
        if min(w, h) < min_side:
            raise ImageError(f"too small: {w}x{h} < {min_side} px")
        if verify:
            if fmt == "JPEG":
                img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
            img.load()
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"corrupt image: {e}") from e
    finally:
        img.close()
    ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return {
        "width": w, "height": h, "format": fmt, "mode": mode, "exif_orientation": orientation,
        "oriented_width": ow, "oriented_height": oh,
    }  # fmt: skip


def ingest_shard(
    list_file: str | os.PathLike,
    root: str | os.PathLike,
    shard: str,
    manifest_path: str | os.PathLike,
    rejects_path: str | os.PathLike,
    stats_path: str | os.PathLike,
    cfg: dict[str, Any],
) -> StageStats:
    """Probe every listed image of one shard; write the manifest, rejects and stats."""
    root = Path(root)
    stats = StageStats("ingest", shard)
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    seen_ids: dict[str, str] = {}
    for entry in read_shard_list(list_file):
        stats.n_in += 1
        shown = display_path(entry.relpath)
        full = root / entry.relpath
        reason = _precheck(entry, shown)
        image_id = path_id(entry.relpath)
        if not reason:
            try:
                if cfg.get("id_from", "path") == "content":
                    image_id = content_id(full)
                meta = probe_image(
                    full, int(cfg["max_pixels"]), int(cfg["min_side"]), bool(cfg.get("verify", True))
                )
            except ImageError as e:
                reason = str(e)
            except OSError as e:
                reason = f"unreadable: {e.strerror or e}"
        if not reason and image_id in seen_ids:
            reason = f"duplicate content of {seen_ids[image_id]}"
        if reason:
            rejects.append(
                Reject(image_id, str(full) if shown == entry.relpath else str(root / shown), "ingest", reason)
            )
            stats.reject(reason)
            continue
        seen_ids[image_id] = entry.relpath
        rows.append(
            {"image_id": image_id, "path": str(full), "relpath": entry.relpath, "n_bytes": entry.size, **meta}
        )
        stats.n_kept += 1
    write_table(manifest_path, rows, columns=MANIFEST_COLUMNS)
    write_rejects(rejects_path, rejects)
    stats.write(stats_path)
    return stats


def _precheck(entry: Entry, shown: str) -> str:
    if entry.error:
        return entry.error
    if shown != entry.relpath:
        return "file name is not valid UTF-8"
    if entry.size == 0:
        return "empty file (0 bytes)"
    return ""


def gather_ingest(
    stats_paths: Sequence[str | os.PathLike],
    rejects_paths: Sequence[str | os.PathLike],
    stats_out: str | os.PathLike,
    rejects_out: str | os.PathLike,
) -> dict[str, Any]:
    """Merge per-shard rejects into one table and per-shard stats into one summary."""
    from relightflow.manifest import read_json, read_tables

    per_shard = [read_json(p) for p in stats_paths]
    total = {k: sum(s[k] for s in per_shard) for k in ("n_in", "n_kept", "n_rejected")}
    reasons: dict[str, int] = {}
    for s in per_shard:
        for r, n in s["reasons"].items():
            reasons[r] = reasons.get(r, 0) + n
    summary = {"stage": "ingest", **total, "reasons": reasons, "shards": {s["shard"]: s for s in per_shard}}
    write_table(rejects_out, read_tables(rejects_paths), columns=["image_id", "path", "stage", "reason"])
    write_json(stats_out, summary)
    return summary
