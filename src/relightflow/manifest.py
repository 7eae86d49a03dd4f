"""Per-shard Parquet manifests, rejects tables and stats files, all written atomically.

Every stage writes one manifest per shard (one row per image or per (image, variant)), a rejects table
(image_id, path, stage, reason) and a small stats JSON (:class:`relightflow.shards.Stats`). Writes go to a temporary name in the same
folder and are renamed into place, so a killed job never leaves a half-written file; a file whose new
content is identical to what is on disk is not rewritten, so its mtime stays (Snakemake then sees
nothing new).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REJECT_COLUMNS = ["image_id", "path", "stage", "reason"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _temp_beside(target: Path, suffix: str) -> Path:
    """A fresh temporary file next to ``target`` with normal file permissions (mkstemp gives 0600).

    Temporaries that a killed writer of the same target left behind are removed first (a target has one
    writer at a time: its job).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*{glob.escape(suffix)}"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    return Path(tmp)


@dataclass(frozen=True)
class Reject:
    """One image that a stage could not keep, and why."""

    image_id: str
    path: str
    stage: str
    reason: str


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    target = Path(path)
    tmp_path = _temp_beside(target, suffix or target.suffix or ".tmp")
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _same_bytes(a: Path, b: Path) -> bool:
    if not b.exists() or a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True


@contextlib.contextmanager
def write_if_changed(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_path`, but leave ``path`` untouched when the new bytes equal the old ones."""
    target = Path(path)
    tmp_path = _temp_beside(target, target.suffix or ".tmp")
    try:
        yield tmp_path
        if not _same_bytes(tmp_path, target):
            os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes, only_if_changed: bool = False) -> None:
    """Atomically write ``data`` to ``path``."""
    ctx = write_if_changed(path) if only_if_changed else atomic_path(path)
    with ctx as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, only_if_changed: bool = False) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    write_bytes(path, text.encode("utf-8"), only_if_changed=only_if_changed)


def write_json(path: str | os.PathLike, obj: Any, only_if_changed: bool = False) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", only_if_changed)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_table(
    path: str | os.PathLike,
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    schema: pa.Schema | None = None,
) -> None:
    """Atomically write rows as Parquet (deterministic bytes, rewritten only when content changes).

    ``columns`` fixes the column order and guarantees the columns exist even for an empty table.
    """
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if columns is not None:
        for col in columns:
            if col not in df.columns:
                df[col] = pd.Series(dtype="object")
        extra = [c for c in df.columns if c not in columns]
        df = df[list(columns) + extra]
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    table = table.replace_schema_metadata(None)  # pandas metadata embeds nothing we need, keep bytes stable
    with write_if_changed(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read one Parquet manifest into a DataFrame."""
    return pq.read_table(path, columns=list(columns) if columns else None).to_pandas()


def read_tables(paths: Iterable[str | os.PathLike], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Concatenate several manifests (a gather). Empty input gives an empty frame."""
    frames = [read_table(p, columns) for p in paths]
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame(columns=list(columns) if columns else None)
    return pd.concat(frames, ignore_index=True)


def iter_batches(path: str | os.PathLike, batch_size: int = 256, columns: Sequence[str] | None = None):
    """Stream a manifest in record batches of DataFrames (bounded memory)."""
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None):
        yield batch.to_pandas()


def write_rejects(path: str | os.PathLike, rejects: Iterable[Reject | Mapping[str, Any]]) -> None:
    """Write a rejects table (image_id, path, stage, reason)."""
    rows = [asdict(r) if isinstance(r, Reject) else dict(r) for r in rejects]
    write_table(path, rows, columns=REJECT_COLUMNS)
