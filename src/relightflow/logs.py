"""Logging for workflow jobs: everything a rule's Python code logs goes to the rule's ``log:`` file."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def logged(log_path: str | os.PathLike | None, level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Send logging, warnings and uncaught errors of the block to ``log_path`` (and stderr)."""
    root = logging.getLogger()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    for h in handlers:
        h.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(h)
    old_level = root.level
    root.setLevel(level)
    logging.captureWarnings(True)
    try:
        yield logging.getLogger("relightflow")
    except Exception:
        logging.getLogger("relightflow").exception("job failed")
        raise
    finally:
        logging.captureWarnings(False)
        root.setLevel(old_level)
        for h in handlers:
            root.removeHandler(h)
            h.close()
