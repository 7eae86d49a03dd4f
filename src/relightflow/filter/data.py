"""The scoring data path: a shard manifest streamed through DataLoader workers that decode at reduced size.

Decoding, not the model, is the bottleneck: a 1024² JPEG decoded in the DCT domain at 1/4 scale (PIL
``draft``) costs ~2 ms instead of ~12 ms for a full decode and resize. Each worker reads whole record
batches of the manifest (``iter_batches``) and returns one ready batch: the image ids travel with the
pixels, and an image that fails to decode is flagged in its batch (with the reason) instead of being
dropped, so scores can never shift onto the wrong image. Images are opened the one way
(:func:`relightflow.images.load_reduced`); only what the file causes is flagged, anything else fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import scipy.fft
import torch.utils.data
from PIL import Image

from relightflow.errors import BadInput
from relightflow.images import load_reduced
from relightflow.manifest import iter_batches
from relightflow.shards import item_context

ROW_COLUMNS = ("image_id", "path", "width", "height")
Prepare = Callable[[np.ndarray], np.ndarray]


def shortest_side_size(w: int, h: int, side: int) -> tuple[int, int]:
    """``(width, height)`` with the shorter side scaled to ``side`` (as torchvision's ``Resize(int)``)."""
    return (side, int(side * h / w)) if w <= h else (int(side * w / h), side)


def resize_center_crop(image: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop a square (CLIP's preprocessing geometry).

    Sizes and crop offsets follow torchvision's ``Resize`` + ``CenterCrop``; the resampling is OpenCV's
    (bicubic, or area averaging when shrinking more than 2x), ~5x faster than PIL's antialiased bicubic.
    """
    arr = np.asarray(image, dtype=np.uint8)
    h, w = arr.shape[:2]
    new = shortest_side_size(w, h, size)
    if new != (w, h):
        shrink = new[0] / w < 0.5
        arr = cv2.resize(arr, new, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    left, top = round((new[0] - size) / 2), round((new[1] - size) / 2)  # as torchvision's CenterCrop
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


def phash(img: np.ndarray | Image.Image) -> str:
    """64-bit perceptual hash as 16 hex digits (imagehash's ``phash``: 32x32 grey, 2-D DCT-II, the 8x8
    lowest frequencies against their median), for near-duplicate removal."""
    grey = cv2.cvtColor(np.asarray(img, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64)
    low = scipy.fft.dct(scipy.fft.dct(small, axis=0), axis=1)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


@dataclass
class Batch:
    """One batch of manifest rows: ``data`` holds the prepared arrays of the rows where ``ok`` is true.

    ``data`` is a tensor so that DataLoader workers hand it over in shared memory, not through a pipe.
    """

    rows: dict[str, list[Any]]
    ok: np.ndarray
    errors: list[str]
    data: torch.Tensor
    phashes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ok)

    def pin_memory(self) -> Batch:
        """Called by a DataLoader with ``pin_memory=True`` (fast asynchronous host-to-GPU copies)."""
        self.data = self.data.pin_memory()
        return self


def prepare_batch(
    rows: dict[str, list[Any]], prepare: Prepare, decode_side: int, shape: tuple[int, ...]
) -> Batch:
    """Decode and prepare every row; a failing image is flagged (``ok`` false, reason in ``errors``)."""
    n = len(rows["image_id"])
    ok = np.zeros(n, dtype=bool)
    errors, hashes, arrays = [""] * n, [""] * n, []
    for i, path in enumerate(rows["path"]):
        with item_context("filter", rows["image_id"][i], path):
            try:
                img = load_reduced(path, decode_side)
            except BadInput as e:  # what the file caused; environment failures and bugs fail the job
                errors[i] = str(e)
                continue
            arrays.append(prepare(img))
            hashes[i] = phash(img)
            ok[i] = True
    data = np.stack(arrays) if arrays else np.zeros((0, *shape), dtype=np.float32)
    return Batch(rows, ok, errors, torch.from_numpy(data), hashes)


class ManifestImages(torch.utils.data.IterableDataset):
    """Iterable over :class:`Batch` es of a manifest; with DataLoader workers, each takes every n-th batch."""

    def __init__(
        self,
        manifest: str | os.PathLike,
        prepare: Prepare,
        decode_side: int,
        shape: tuple[int, ...],
        batch_size: int,
    ):
        self.manifest, self.prepare, self.decode_side = str(manifest), prepare, decode_side
        self.shape, self.batch_size = shape, batch_size

    def _worker(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (info.id, info.num_workers) if info else (0, 1)

    def __iter__(self) -> Iterator[Batch]:
        worker, n_workers = self._worker()
        start = 0
        for k, frame in enumerate(iter_batches(self.manifest, self.batch_size)):
            if k % n_workers == worker:
                rows = {c: frame[c].tolist() if c in frame else [None] * len(frame) for c in ROW_COLUMNS}
                rows["row"] = list(range(start, start + len(frame)))
                yield prepare_batch(rows, self.prepare, self.decode_side, self.shape)
            start += len(frame)


def _identity(batch: Batch) -> Batch:
    return batch


@contextlib.contextmanager
def _single_threaded_opencv() -> Iterator[None]:
    """OpenCV without its thread pool while forked workers run.

    Parallelism comes from the worker processes; and a forked child must never touch the pool it
    inherited (``cv2.setNumThreads`` in a worker waits forever on the parent's pool threads), so the
    setting is made in the parent, before the fork, and restored afterwards.
    """
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def iter_prepared(
    manifest: str | os.PathLike,
    prepare: Prepare,
    decode_side: int,
    shape: tuple[int, ...],
    batch_size: int = 64,
    num_workers: int = 2,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Stream prepared batches of a shard manifest, decoded by ``num_workers`` processes (0: in-process)."""
    dataset = ManifestImages(manifest, prepare, decode_side, shape, batch_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity,
        prefetch_factor=4 if num_workers else None, pin_memory=pin_memory,
    )  # fmt: skip
    with _single_threaded_opencv():
        yield from loader
