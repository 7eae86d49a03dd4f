"""Ingest: list the input, assign images to stable shards, probe each image's header.

The listing runs when the workflow is parsed (so shard ids are known up front and shard jobs can be
grouped on a cluster). It is cached as an assignment table: an image keeps its shard forever; new
images fill the last shard, then open new ones; so adding images never moves existing ones. Each
shard's list file (path, size, mtime) is rewritten only when its content changes, which is what makes
Snakemake rerun exactly the shards whose images changed. The shard state is written under a lock, each
file atomically, and never deleted; a folder that cannot be listed stops the run instead of silently
dropping its images from their shards.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import posixpath
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from PIL import ExifTags, Image

from relightflow.errors import BadInput, describe, is_environment_failure
from relightflow.images import ImageError, content_id, open_image, path_id
from relightflow.manifest import write_json, write_text
from relightflow.shards import ShardStage

log = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MANIFEST_COLUMNS = [
    "image_id", "path", "relpath", "width", "height", "format", "mode", "n_bytes", "exif_orientation",
    "oriented_width", "oriented_height",
]  # fmt: skip
ORIENTATION_TAG = ExifTags.Base.Orientation
LOCK_TIMEOUT_S = 120


class UnreadableInput(OSError):
    """A folder of the input cannot be listed: stop, rather than drop its images from their shards."""


class Entry(NamedTuple):
    """One listed input file: its path relative to the root, size and mtime, or why it can't be read.

    ``size`` -1 means "not statted at planning time" (generated demo files): ingest stats it itself.
    A tuple (not a dataclass): a million of them are built at every dry run.
    """

    relpath: str
    size: int = -1
    mtime_ns: int = 0
    error: str = ""


def display_path(path: str) -> str:
    """A printable, UTF-8-safe version of a path that may hold undecodable bytes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _entry(relpath: str, st: os.stat_result) -> Entry:
    if not stat.S_ISREG(st.st_mode):
        return Entry(relpath, -1, 0, "not a regular file")
    return Entry(relpath, st.st_size, st.st_mtime_ns, "")


def _stat_entry(full: str, relpath: str) -> Entry:
    try:
        st = os.stat(full)
    except OSError as e:
        if e.errno in (errno.EIO, errno.ESTALE, errno.ETIMEDOUT):
            raise UnreadableInput(f"cannot stat {display_path(full)}: {e.strerror}") from e
        return Entry(relpath, -1, 0, "symlink loop" if e.errno == errno.ELOOP else f"cannot stat: {e.strerror}")
    if stat.S_ISREG(st.st_mode):
        return Entry(relpath, st.st_size, st.st_mtime_ns, "")
    return Entry(relpath, -1, 0, "not a regular file")


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def scan_folder(root: str | os.PathLike, extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> list[Entry]:
    """Recursively list files under ``root`` whose suffix matches (case-insensitive).

    Symlinked files are kept once: a link to a file already listed under the root is skipped (no double
    counting, compared by device and inode); directory symlinks are not followed (no loops); a broken or
    looping link is listed with its error so ingest records it as a reject. A folder that cannot be
    listed raises :class:`UnreadableInput`.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"input.root is not a folder: {root}")
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    entries: list[Entry] = []
    seen: dict[tuple[int, int], str] = {}
    links: list[tuple[str, str]] = []
    stack = [("", root)]
    while stack:
        prefix, folder = stack.pop()
        try:
            items = list(os.scandir(folder))
        except OSError as e:
            raise UnreadableInput(
                f"cannot list input folder {display_path(folder)}: {e.strerror or e}. Its images would leave "
                "their shards; fix the access (or remove the folder) and run again."
            ) from e
        for item in items:
            rel = prefix + item.name
            if item.is_dir(follow_symlinks=False):
                stack.append((rel + "/", item.path))
            elif _suffix(item.name) in exts:
                if item.is_symlink():
                    links.append((rel, item.path))
                    continue
                st = item.stat(follow_symlinks=False)
                seen[(st.st_dev, st.st_ino)] = rel
                entries.append(_entry(rel, st))
    for rel, full in links:
        entry = _stat_entry(full, rel)
        if not entry.error:
            st = os.stat(full)
            if (st.st_dev, st.st_ino) in seen:
                log.info("skipping %s: a link to %s, already listed", display_path(rel),
                         display_path(seen[(st.st_dev, st.st_ino)]))  # fmt: skip
                continue
            seen[(st.st_dev, st.st_ino)] = rel
        entries.append(entry)
    entries.sort()  # tuples sort by relpath first
    return entries


def read_path_list(list_file: str | os.PathLike, column: str = "path") -> list[str]:
    """Paths from a CSV / Parquet (column ``column``, else the first) or TXT (one per line) file."""
    p = Path(list_file)
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        df = pd.read_parquet(p)
    elif suffix in (".csv", ".tsv"):
        df = pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    else:
        stripped = (line.strip() for line in p.read_text(encoding="utf-8", errors="surrogateescape").splitlines())
        return [line for line in stripped if line and line[0] != "#"]
    col = column if column in df.columns else df.columns[0]
    return [v for v in (str(x).strip() for x in df[col].tolist()) if v]


def scan_list(list_file: str | os.PathLike, root: str | os.PathLike, column: str = "path") -> list[Entry]:
    """List the files named in a list file, relative to ``root``; duplicates counted once."""
    root = os.fspath(root)
    prefix = root.rstrip("/") + "/"
    out: dict[str, Entry] = {}
    for raw in read_path_list(list_file, column):
        rel = os.path.relpath(raw, root) if raw.startswith("/") else raw
        if "\\" in rel or "./" in rel or "//" in rel or rel.endswith("/."):  # rare: normalise only then
            rel = posixpath.normpath(rel.replace(os.sep, "/"))
        if rel not in out:
            out[rel] = _stat_entry(prefix + rel, rel)
    return sorted(out.values())  # tuples sort by relpath first


def assign_shards(
    relpaths: Iterable[str], shard_size: int, previous: dict[str, int] | None = None
) -> dict[str, int]:
    """Stable, append-only shard assignment: known paths keep their shard, new ones fill the last."""
    previous = previous or {}
    relpaths = list(relpaths)
    assignment = {p: previous[p] for p in relpaths if p in previous} if previous else {}
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


@contextlib.contextmanager
def state_lock(state_dir: str | os.PathLike, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive lock on the shard state (one writer at a time across processes)."""
    os.makedirs(state_dir, exist_ok=True)
    fd = os.open(os.path.join(state_dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the shard state in {state_dir} stayed locked for {timeout_s:.0f} s") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def _write_if_different(path: str, text: str) -> bool:
    """Atomically write ``text`` unless the file already holds exactly it; True when written."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    write_text(path, text)
    return True


def plan_shards(entries: Sequence[Entry], shard_size: int, state_dir: str | os.PathLike) -> list[str]:
    """Assign ``entries`` to shards (reusing the cached assignment) and write one list file per shard.

    Under :func:`state_lock`: list files ``<state_dir>/lists/<shard>.json`` (each a JSON array of
    ``[relpath, size, mtime_ns, error]``) rewritten only when their content changes, the assignment cache
    ``assignment.json`` (only when it changed) and the shard ids ``shards.json``. Returns the sorted ids.
    """
    state = os.fspath(state_dir)
    with state_lock(state):
        previous = _previous_assignment(os.path.join(state, "assignment.json"), shard_size)
        assignment = assign_shards((e.relpath for e in entries), shard_size, previous)
        names: dict[int, str] = {}
        by_shard: dict[str, list[Entry]] = {}
        for e in entries:
            index = assignment[e.relpath]
            name = names.get(index) or names.setdefault(index, shard_name(index))
            by_shard.setdefault(name, []).append(e)
        shards = sorted(by_shard)
        written = sum(_write_if_different(shard_list_file(state, s), json.dumps(by_shard[s]) + "\n") for s in shards)
        if assignment != previous:
            write_json(os.path.join(state, "assignment.json"), {"shard_size": shard_size, "assignment": assignment})
        _write_if_different(os.path.join(state, "shards.json"), json.dumps(shards) + "\n")
    log.info("%d images in %d shards (%d list files changed)", len(entries), len(shards), written)
    return shards


def shard_list_file(state_dir: str | os.PathLike, shard: str) -> str:
    """The list file of ``shard``: changes exactly when the shard's images change."""
    return os.path.join(state_dir, "lists", f"{shard}.json")


def _previous_assignment(path: str, shard_size: int) -> dict[str, int]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    if data.get("shard_size") != shard_size:
        log.warning("shards.size changed (%s -> %s): reassigning all shards", data.get("shard_size"), shard_size)
        return {}
    return data["assignment"]


def cached_shards(state_dir: str | os.PathLike) -> list[str]:
    """Shard ids of the last plan written by :func:`plan_shards` (no rescan); [] when there is none."""
    try:
        with open(os.path.join(state_dir, "shards.json"), encoding="utf-8") as f:
            return list(json.load(f))
    except FileNotFoundError:
        return []


def read_shard_list(path: str | os.PathLike) -> list[Entry]:
    with open(path, encoding="utf-8") as f:
        return [Entry(*row) for row in json.load(f)]


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


def probe_image(path: str | os.PathLike, min_side: int, verify: bool = True) -> dict[str, Any]:
    """Read an image's header and check it; raise :class:`ImageError` with a reason otherwise.

    With ``verify``, PIL's structural check runs on a fresh handle (it must come first), then a cheap
    decode (JPEG at 1/8 scale in the DCT domain, other formats fully) catches truncated data.
    """
    if verify:
        with _as_reject("corrupt image"), open_image(path) as img:
            img.verify()
    img = open_image(path)
    try:
        with _as_reject("corrupt image"):
            w, h = img.size
            fmt, mode = img.format or "", img.mode
            orientation = _exif_orientation(img)
            if min(w, h) < min_side:
                raise ImageError(f"too small: {w}x{h} < {min_side} px")
            if verify:
                if fmt == "JPEG":
                    img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
                img.load()
    finally:
        img.close()
    ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return {
        "width": w, "height": h, "format": fmt, "mode": mode, "exif_orientation": orientation,
        "oriented_width": ow, "oriented_height": oh,
    }  # fmt: skip


@contextlib.contextmanager
def _as_reject(prefix: str) -> Iterator[None]:
    """Whatever the file makes Pillow raise becomes :class:`ImageError`; environment failures pass."""
    try:
        yield
    except BadInput:
        raise
    except Exception as e:
        if is_environment_failure(e):
            raise
        raise ImageError(f"{prefix}: {describe(e)}") from e


class IngestStage(ShardStage):
    """Probe every image of a shard's list file (header, size, decodability, EXIF orientation)."""

    name = "ingest"
    columns = MANIFEST_COLUMNS

    def __init__(self, listing: str | os.PathLike, root: str | os.PathLike, cfg: dict[str, Any]):
        super().__init__(listing)
        self.root, self.cfg = Path(root), cfg
        self.seen: dict[str, str] = {}  # image_id -> relpath, for content duplicates within the shard

    def items(self) -> Iterator[list[Entry]]:
        entries = read_shard_list(self.source)
        for i in range(0, len(entries), self.batch_size):
            yield entries[i : i + self.batch_size]

    def identify(self, entry: Entry) -> tuple[str, str]:
        return path_id(entry.relpath), str(self.root / display_path(entry.relpath))

    def process(self, entry: Entry) -> dict[str, Any]:
        reason = _precheck(entry)
        if reason:
            raise ImageError(reason)
        full = self.root / entry.relpath
        meta = probe_image(full, int(self.cfg["min_side"]), bool(self.cfg["verify"]))
        image_id = path_id(entry.relpath)
        if self.cfg["id_from"] == "content":
            with _as_reject("unreadable"):
                image_id = content_id(full)
        if image_id in self.seen:
            raise ImageError(f"duplicate content of {display_path(self.seen[image_id])}")
        self.seen[image_id] = entry.relpath
        size = entry.size if entry.size >= 0 else full.stat().st_size
        return {"image_id": image_id, "path": str(full), "relpath": entry.relpath, "n_bytes": size, **meta}


def _precheck(entry: Entry) -> str:
    if entry.error:
        return entry.error
    if display_path(entry.relpath) != entry.relpath:
        return "file name is not valid UTF-8"
    if entry.size == 0:
        return "empty file (0 bytes)"
    return ""


