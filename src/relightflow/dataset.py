"""Export (degraded input, instruction, original) triplets of one split as a Hugging Face Parquet dataset.

The export is a gather: it reads the selection (split of each image), every shard's pairs manifest and
captions table, and streams rows shard by shard into ``data-NNNNN.parquet`` files written with a pyarrow
``ParquetWriter`` (a few rows in memory at a time). Columns are the InstructPix2Pix ones the diffusers
example trainers expect (``input_image``, ``edit_prompt``, ``edited_image``; ``Image`` features in the
schema's ``huggingface`` metadata, so ``datasets.load_dataset("parquet", ...)`` decodes them) plus
provenance (image id, variant, degradation and its parameters, caption source, seeds).

The lighting measurement an instruction was made from travels with it, so evaluation re-measures every
output exactly that way (:mod:`relightflow.evaluate.instruction`): ``subject_mask`` (the caption's subject
mask as a PNG at its own size, None when the caption measured without one), ``measure_version`` (the
caption's) and ``measure_side`` (the longer side of the image the measurement worked on: the original at
:data:`relightflow.captions.measure.WORK_SIDE` or smaller, assuming ``captions.max_side`` and
``pairs.max_side`` are at least that).
Optionally the same rows also go to WebDataset tar shards. A row without an instruction, or whose
images cannot be read, becomes a reject with a reason.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from relightflow.images import ImageError, load_mask, load_rgb
from relightflow.manifest import Reject, iter_batches, read_table, write_rejects
from relightflow.shards import Stats

log = logging.getLogger(__name__)

STAGE = "dataset"
IMAGE_COLUMNS = ("input_image", "edited_image", "subject_mask")
PROVENANCE = {
    "image_id": "string",
    "variant": "int32",
    "split": "string",
    "path": "string",
    "lighting_score": "float64",
    "degradation": "string",
    "degradation_params": "string",
    "pair_seed": "int64",
    "caption_source": "string",
    "light_direction": "string",
    "color_temperature": "string",
    "width": "int32",
    "height": "int32",
    "measure_version": "string",
    "measure_side": "int32",
}


@dataclass(frozen=True)
class ExportOptions:
    """How images are stored: shorter side capped at ``resolution`` (no upscaling), ``rows_per_file``."""

    resolution: int | None = 512
    rows_per_file: int = 500
    image_format: str = "png"  # png (lossless) | jpg
    jpeg_quality: int = 95
    row_group_size: int = 32

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ExportOptions:
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in cfg.items() if k in keys})


def features():
    """The ``datasets.Features`` of an exported split."""
    import datasets

    cols = {"input_image": datasets.Image(), "edit_prompt": datasets.Value("string")}
    cols["edited_image"] = datasets.Image()
    cols.update({k: datasets.Value(v) for k, v in PROVENANCE.items()})
    cols["subject_mask"] = datasets.Image()
    return datasets.Features(cols)


def fit_shorter_side(image: np.ndarray, resolution: int | None) -> np.ndarray:
    """Downscale so the shorter side equals ``resolution`` (area interpolation); never upscale."""
    import cv2

    h, w = image.shape[:2]
    if not resolution or min(h, w) <= resolution:
        return image
    scale = resolution / min(h, w)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """PNG (fast zlib level) or JPEG bytes of an RGB uint8 array."""
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    else:
        Image.fromarray(image).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    """A bool mask as a 1-bit PNG (what :func:`relightflow.images.load_mask` reads back exactly)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def measurement_provenance(caption: Mapping[str, Any], target_side: int) -> dict[str, Any]:
    """``subject_mask`` / ``measure_version`` / ``measure_side`` of a row: how its caption measured the
    original (the mask is read as the caption read it); all None when the caption records no measurement."""
    from relightflow.captions.measure import WORK_SIDE

    version = _clean(caption.get("measure_version"))
    if not version:
        return {"subject_mask": None, "measure_version": None, "measure_side": None}
    mask_path, mask = _clean(caption.get("mask_path")), None
    if mask_path:
        try:
            mask = {"bytes": encode_mask(load_mask(mask_path)), "path": None}
        except ImageError as e:
            raise ImageError(f"mask unreadable: {e}") from e
    return {"subject_mask": mask, "measure_version": str(version), "measure_side": min(WORK_SIDE, target_side)}


def load_selection(path: str | os.PathLike) -> pd.DataFrame:
    """The selection table indexed by image_id (split, path, lighting_score)."""
    sel = read_table(path, ["image_id", "path", "lighting_score", "split"])
    return sel.drop_duplicates("image_id").set_index("image_id")


def load_captions(path: str | os.PathLike) -> dict[tuple[str, int | None], dict[str, Any]]:
    """Captions of one shard keyed by (image_id, variant) (variant None when captions are per image)."""
    table = read_table(path)
    per_variant = "variant" in table.columns
    out = {}
    for row in table.to_dict("records"):
        key = (row["image_id"], int(row["variant"]) if per_variant else None)
        out[key] = row
    return out


def _caption_for(captions: Mapping, image_id: str, variant: int) -> dict[str, Any] | None:
    return captions.get((image_id, variant)) or captions.get((image_id, None))


def _clean(value: Any) -> Any:
    """None for NaN / missing values (pandas reads nulls as NaN)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def _load_pair(row: Mapping[str, Any], opts: ExportOptions) -> tuple[np.ndarray, np.ndarray, int]:
    """Input and target at export size and the target's longer side as stored; ImageError when missing,
    unreadable or of different sizes."""
    target = load_rgb(row["target_path"])
    degraded = load_rgb(row["input_path"])
    if degraded.shape != target.shape:
        raise ImageError(f"input/target size mismatch: {degraded.shape[:2]} vs {target.shape[:2]}")
    side = max(target.shape[:2])
    return fit_shorter_side(degraded, opts.resolution), fit_shorter_side(target, opts.resolution), side


def build_row(
    row: Mapping[str, Any],
    caption: Mapping[str, Any] | None,
    selected: Mapping[str, Any],
    opts: ExportOptions,
) -> dict[str, Any]:
    """One dataset row (encoded images + provenance); raises ImageError (= reject reason)."""
    instruction = _clean((caption or {}).get("instruction"))
    if not instruction or not str(instruction).strip():
        raise ImageError("no instruction")
    degraded, target, stored_side = _load_pair(row, opts)
    fmt, q = opts.image_format, opts.jpeg_quality
    params = _clean(row.get("degradation_params"))
    return {
        "input_image": {"bytes": encode_image(degraded, fmt, q), "path": None},
        "edit_prompt": str(instruction).strip(),
        "edited_image": {"bytes": encode_image(target, fmt, q), "path": None},
        "image_id": row["image_id"],
        "variant": int(row.get("variant") or 0),
        "split": selected["split"],
        "path": selected.get("path"),
        "lighting_score": _clean(selected.get("lighting_score")),
        "degradation": _clean(row.get("degradation")),
        "degradation_params": params if isinstance(params, str) or params is None else json.dumps(params),
        "pair_seed": _clean(row.get("seed")),
        "caption_source": _clean(caption.get("source")),
        "light_direction": _clean(caption.get("light_direction")),
        "color_temperature": _clean(caption.get("color_temperature")),
        "width": target.shape[1],
        "height": target.shape[0],
        **measurement_provenance(caption, stored_side),
    }


class RollingParquetWriter:
    """Rows → ``data-NNNNN.parquet`` files of at most ``rows_per_file`` rows, row groups of ``row_group_size``."""

    def __init__(self, out_dir: Path, schema: pa.Schema, rows_per_file: int, row_group_size: int):
        self.out_dir, self.schema = out_dir, schema
        self.rows_per_file, self.row_group_size = rows_per_file, row_group_size
        self.files: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0
        self._buffer: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        if (
            len(self._buffer) >= self.row_group_size
            or self._in_file + len(self._buffer) >= self.rows_per_file
        ):
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self.files.append(self.out_dir / f"data-{len(self.files):05d}.parquet")
            self._writer = pq.ParquetWriter(self.files[-1], self.schema, compression="zstd")
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
        self._in_file += len(self._buffer)
        self._buffer = []
        if self._in_file >= self.rows_per_file:
            self._writer.close()
            self._writer, self._in_file = None, 0

    def close(self) -> None:
        self._flush()
        if self._writer is None and not self.files:  # an empty split still loads (0 rows)
            self.files.append(self.out_dir / "data-00000.parquet")
            pq.write_table(self.schema.empty_table(), self.files[-1], compression="zstd")
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WebDatasetWriter:
    """Rows → WebDataset tar shards (``{key}.input.png``, ``.target.png``, ``.mask.png``, ``.txt``, ``.json``)."""

    def __init__(self, out_dir: Path, prefix: str, rows_per_file: int, image_format: str):
        self.out_dir, self.prefix, self.rows_per_file = out_dir, prefix, rows_per_file
        self.ext = "jpg" if image_format in ("jpg", "jpeg") else "png"
        self.files: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._in_file = 0

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, row: dict[str, Any]) -> None:
        if self._tar is None:
            self.files.append(self.out_dir / f"{self.prefix}-{len(self.files):05d}.tar")
            self._tar = tarfile.open(self.files[-1], "w")  # noqa: SIM115 (closed in close())
        key = f"{row['image_id']}_{row['variant']}"
        meta = {k: v for k, v in row.items() if k not in IMAGE_COLUMNS}
        self._member(f"{key}.input.{self.ext}", row["input_image"]["bytes"])
        self._member(f"{key}.target.{self.ext}", row["edited_image"]["bytes"])
        if row.get("subject_mask"):
            self._member(f"{key}.mask.png", row["subject_mask"]["bytes"])
        self._member(f"{key}.txt", row["edit_prompt"].encode("utf-8"))
        self._member(f"{key}.json", json.dumps(meta, sort_keys=True, default=str).encode("utf-8"))
        self._in_file += 1
        if self._in_file >= self.rows_per_file:
            self.close()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar, self._in_file = None, 0


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` onto ``target`` (the old content is removed)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)


def _fresh_tmp(target: Path) -> Path:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def iter_split_rows(
    split: str,
    selection: pd.DataFrame,
    pairs: Sequence[str | os.PathLike],
    captions: Sequence[str | os.PathLike],
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]]:
    """(pair row, caption, selection row) of ``split``, shard by shard; pairs[i] goes with captions[i]."""
    for pairs_path, captions_path in zip(pairs, captions, strict=True):
        shard_captions = load_captions(captions_path)
        for batch in iter_batches(pairs_path, batch_size=256):
            for row in batch.to_dict("records"):
                if row["image_id"] not in selection.index:
                    log.warning("pair of unselected image %s ignored", row["image_id"])
                    continue
                selected = selection.loc[row["image_id"]].to_dict()
                if selected["split"] != split:
                    continue
                caption = _caption_for(shard_captions, row["image_id"], int(row.get("variant") or 0))
                yield row, caption, selected


def export_split(
    split: str,
    selection_path: str | os.PathLike,
    pairs: Sequence[str | os.PathLike],
    captions: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    stats_path: str | os.PathLike,
    rejects_path: str | os.PathLike,
    cfg: Mapping[str, Any] | None = None,
    webdataset_dir: str | os.PathLike | None = None,
) -> Stats:
    """Write ``out_dir/data-*.parquet`` (and WebDataset tars) for ``split``; stats and rejects beside."""
    opts = ExportOptions.from_config(cfg or {})
    out, stats, rejects = Path(out_dir), Stats(STAGE, split), []
    tmp = _fresh_tmp(out)
    writer = RollingParquetWriter(tmp, features().arrow_schema, opts.rows_per_file, opts.row_group_size)
    wds = None
    if webdataset_dir:
        wds_target = Path(webdataset_dir)
        wds = WebDatasetWriter(_fresh_tmp(wds_target), split, opts.rows_per_file, opts.image_format)
    for row, caption, selected in iter_split_rows(split, load_selection(selection_path), pairs, captions):
        stats.n_in += 1
        try:
            record = build_row(row, caption, selected, opts)
        except ImageError as e:
            stats.reject(str(e))
            rejects.append(Reject(row["image_id"], str(selected.get("path")), STAGE, str(e)))
            continue
        writer.add(record)
        if wds:
            wds.add(record)
        stats.n_kept += 1
    writer.close()
    stats.n_rows = stats.n_kept
    stats.info = {"files": [p.name for p in writer.files], "resolution": opts.resolution}
    if wds:
        wds.close()
        stats.info["webdataset_files"] = [p.name for p in wds.files]
        replace_dir(wds.out_dir, wds_target)
    replace_dir(tmp, out)
    write_rejects(rejects_path, rejects)
    stats.write(stats_path)
    log.info(
        "%s: %d rows kept, %d rejected, %d files", split, stats.n_kept, stats.n_rejected, len(writer.files)
    )
    return stats


def data_files(dataset_dir: str | os.PathLike) -> list[str]:
    """The Parquet files of an exported split, in order."""
    return sorted(str(p) for p in Path(dataset_dir).glob("data-*.parquet"))


def load_split(dataset_dir: str | os.PathLike, **kwargs):
    """An exported split as a ``datasets.Dataset`` (images decode to PIL)."""
    import datasets

    files = data_files(dataset_dir)
    if not files:
        raise FileNotFoundError(f"no data-*.parquet in {dataset_dir}")
    if sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 0:  # datasets cannot read 0-row files
        return datasets.Dataset(features().arrow_schema.empty_table())
    return datasets.load_dataset("parquet", data_files=files, split="train", **kwargs)


def write_webdataset(
    dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, rows_per_file: int = 500
) -> int:
    """Copy an exported split into WebDataset tar shards (streamed; image bytes are not re-encoded)."""
    target = Path(out_dir)
    split = Path(dataset_dir).name
    fmt = "png"
    wds = WebDatasetWriter(_fresh_tmp(target), split, rows_per_file, fmt)
    n = 0
    for path in data_files(dataset_dir):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            for row in batch.to_pylist():
                if n == 0 and row["input_image"]["bytes"][:3] == b"\xff\xd8\xff":
                    wds.ext = "jpg"
                wds.add(row)
                n += 1
    wds.close()
    replace_dir(wds.out_dir, target)
    log.info("%s: %d rows in %d tar shards", split, n, len(wds.files))
    return n
