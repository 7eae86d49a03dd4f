"""The one error policy of every stage.

* :class:`BadInput` — one image or one answer cannot be used (undecodable file, wrong format, too small,
  an unparseable model reply, an empty mask ...). Raised while reading one item; the shard driver records
  a reject row with the message as the reason and goes on.
* Environment failures — out of memory (host or GPU), device errors, a full or failing disk, network
  errors that outlived their retries, a model that cannot be loaded (:class:`EnvironmentFailure`). They
  are never turned into rejects: the job fails naming the item, and Snakemake / Slurm retry it (with more
  memory where the profile says so).
* Anything else is a bug: the job fails too.

So a function that reads untrusted input converts what the *input* caused into :class:`BadInput` and lets
:func:`is_environment_failure` errors through; nothing else catches broadly.
"""

from __future__ import annotations

import errno

# OSError numbers that come from the machine (disk, NFS, limits), not from the file's content
ENVIRONMENT_ERRNOS = frozenset({
    errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.ESTALE, errno.ENOMEM, errno.ETIMEDOUT, errno.ENFILE,
    errno.EMFILE, errno.EROFS, errno.ENOLCK, errno.EAGAIN,
})  # fmt: skip
# RuntimeError messages of device failures (torch raises plain RuntimeErrors for most of them)
DEVICE_MESSAGES = ("out of memory", "cuda error", "cudnn", "cublas", "nccl", "device-side assert", "hip error",
                   "mps backend out of memory", "xpu out of memory")  # fmt: skip


class BadInput(Exception):
    """One item's input is unusable; the message is the reject reason recorded for it."""


class EnvironmentFailure(RuntimeError):
    """The environment failed (model missing, service down after retries ...): fail the job, retry later."""


def is_environment_failure(error: BaseException) -> bool:
    """True for errors the machine caused (memory, devices, disks, exhausted network retries)."""
    if isinstance(error, MemoryError | EnvironmentFailure):
        return True
    if type(error).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
        return True
    if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
        return True
    if isinstance(error, RuntimeError):
        text = str(error).lower()
        return any(m in text for m in DEVICE_MESSAGES)
    return False


def describe(error: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
