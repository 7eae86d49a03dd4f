"""GPU slots for local runs: each GPU job gets its own device(s) through lock files.

Snakemake's ``--resources gpu=N`` caps how many GPUs running jobs declare in total, but not *which*
GPU each job uses. ``gpu_slots(n)`` picks ``n`` free slots out of the machine's GPUs, holds them with
``fcntl.flock`` on one file per slot, and sets ``CUDA_VISIBLE_DEVICES`` for the block. The kernel drops
a flock when its holder exits, so a crashed (even SIGKILLed) job frees its slots by itself.

Under a scheduler that already assigned devices (``CUDA_VISIBLE_DEVICES`` or ``SLURM_JOB_GPUS`` set),
or on a machine without GPUs, it does nothing. Call it before anything initialises CUDA: CUDA reads
``CUDA_VISIBLE_DEVICES`` once, at initialisation.

Environment: ``RELIGHTFLOW_GPUS`` (GPU count; default ``torch.cuda.device_count()``; slots are devices
``0..N-1``, so ``RELIGHTFLOW_GPUS=4`` on a workstation uses its first four GPUs — don't export
``CUDA_VISIBLE_DEVICES`` for Snakemake itself, it would read as a scheduler's assignment),
``RELIGHTFLOW_GPU_LOCK_DIR`` (default ``$XDG_RUNTIME_DIR/relightflow-gpu-slots``, else
``/tmp/relightflow-gpu-slots-<uid>``). The folder must be private (this user's, mode 0700, not a symlink)
and lock files are opened without following symlinks, so another user of a shared login node can neither
watch nor redirect the locks to overwrite a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

SCHEDULER_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")


def default_lock_dir() -> Path:
    """``$RELIGHTFLOW_GPU_LOCK_DIR``, else a per-user folder (see the module docstring)."""
    env = os.environ.get("RELIGHTFLOW_GPU_LOCK_DIR")
    if env:
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "relightflow-gpu-slots"
    return Path(f"/tmp/relightflow-gpu-slots-{os.getuid()}")


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) or check that it is a private folder of this user; PermissionError else."""
    with contextlib.suppress(FileExistsError):
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(
            f"GPU lock folder {path} is not a private folder of this user (a symlink, another owner, or "
            f"open to others: uid {st.st_uid}, mode {stat.filemode(st.st_mode)}); remove it or set "
            "RELIGHTFLOW_GPU_LOCK_DIR to a folder only you can write"
        )
    return path


def _open_lock(path: Path) -> IO[str]:
    """Open (create) a lock file without following a symlink planted in its place."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "a+", encoding="utf-8")


def gpu_count() -> int:
    """GPUs of this machine: ``$RELIGHTFLOW_GPUS``, else ``torch.cuda.device_count()`` (0 without torch).

    torch counts through NVML without initialising CUDA, so ``CUDA_VISIBLE_DEVICES`` can still be set.
    """
    env = os.environ.get("RELIGHTFLOW_GPUS", "").strip()
    if env:
        return int(env)
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count())


def scheduler_devices() -> list[str] | None:
    """Devices a scheduler already assigned (from the first set of ``SCHEDULER_VARS``), else None."""
    for var in SCHEDULER_VARS:
        value = os.environ.get(var)
        if value is not None:
            return [d for d in value.split(",") if d.strip()]
    return None


def _lock_path(lock_dir: Path, slot: int) -> Path:
    return lock_dir / f"gpu{slot}.lock"


def _try_lock(path: Path) -> IO[str] | None:
    """Open and flock ``path`` without blocking; the open file (holding the lock) or None if held."""
    handle = _open_lock(path)  # the handle outlives this function: it holds the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _release(handles: dict[int, IO[str]]) -> None:
    for handle in handles.values():
        with contextlib.suppress(OSError):
            handle.truncate(0)
        handle.close()  # closing drops the flock
    handles.clear()


def _mark_holder(handle: IO[str]) -> None:
    handle.seek(0)
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()


def try_acquire(n: int, total: int, lock_dir: Path) -> dict[int, IO[str]] | None:
    """All-or-nothing: lock ``n`` free slots of ``range(total)``; their open handles, or None.

    A directory-wide lock serialises attempts, so two multi-GPU jobs never each hold half of what the
    other needs (no hold-and-wait deadlock).
    """
    private_dir(lock_dir)
    with _open_lock(lock_dir / "alloc.lock") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        held: dict[int, IO[str]] = {}
        for slot in range(total):
            handle = _try_lock(_lock_path(lock_dir, slot))
            if handle is not None:
                held[slot] = handle
                if len(held) == n:
                    for h in held.values():
                        _mark_holder(h)
                    return held
        _release(held)
        return None


def slot_holders(total: int | None = None, lock_dir: Path | None = None) -> dict[int, int | None]:
    """For each slot, the pid holding it, or None when free (for diagnostics and tests)."""
    lock_dir = lock_dir or default_lock_dir()
    total = gpu_count() if total is None else total
    holders: dict[int, int | None] = {}
    for slot in range(total):
        path = _lock_path(lock_dir, slot)
        if not path.exists():
            holders[slot] = None
            continue
        handle = _try_lock(path)
        if handle is not None:
            handle.close()
            holders[slot] = None
        else:
            text = path.read_text(encoding="utf-8").strip()
            holders[slot] = int(text) if text.isdigit() else -1
    return holders


@contextlib.contextmanager
def _visible_devices(devices: list[str]) -> Iterator[None]:
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


@contextlib.contextmanager
def gpu_slots(
    n: int,
    *,
    total: int | None = None,
    lock_dir: str | os.PathLike | None = None,
    timeout: float | None = None,
    poll: float = 0.5,
) -> Iterator[list[str]]:
    """Hold ``n`` GPU slots for the block and expose them as ``CUDA_VISIBLE_DEVICES``.

    Yields the device ids now visible (``[]`` when there is nothing to do: ``n <= 0`` or no GPUs).
    A request above the machine's GPU count is lowered to it (with a warning).
    Waits for free slots (``timeout`` seconds, None = forever; then ``TimeoutError``).
    """
    n = int(n or 0)
    assigned = scheduler_devices()
    if assigned is not None:
        if n > 0:
            log.info("GPUs assigned by the scheduler: %s", ",".join(assigned) or "none")
        yield assigned
        return
    total = gpu_count() if total is None else total
    if n <= 0 or total <= 0:
        yield []
        return
    if n > total:  # as Snakemake lowers a request above --resources gpu=N
        log.warning("job asks for %d GPUs but this machine has %d: using %d", n, total, total)
        n = total
    directory = Path(lock_dir) if lock_dir else default_lock_dir()
    held = _wait_for_slots(n, total, directory, timeout, poll)
    devices = [str(slot) for slot in sorted(held)]
    log.info("holding GPU slot(s) %s (lock dir %s)", ",".join(devices), directory)
    try:
        with _visible_devices(devices):
            yield devices
    finally:
        _release(held)


def _wait_for_slots(
    n: int, total: int, lock_dir: Path, timeout: float | None, poll: float
) -> dict[int, IO[str]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    waited = False
    while (held := try_acquire(n, total, lock_dir)) is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"no {n} free GPU slot(s) of {total} in {lock_dir} after {timeout} s")
        if not waited:
            log.info("waiting for %d free GPU slot(s) of %d", n, total)
            waited = True
        time.sleep(poll)
    return held
