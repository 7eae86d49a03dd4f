"""Checkpoints that resume only the run that wrote them.

A run's **fingerprint** records what shaped its weights: the training settings except the step budget
and the logging / checkpoint / validation cadence (and keys the family does not train with), the base
model's identity (path or hub id, plus a digest of its small files — configs, weight indexes, tokenizer
— and of the names, sizes and modification times of its weight files), and the training data's content
(SHA-256 of each exported Parquet file; of the cached latents too when training reads them). Every
checkpoint stores it in ``trainer_state.json``, written last, then the folder is renamed from its
temporary name: a folder named ``checkpoint-<step>`` is complete.

A rerun resumes from the newest checkpoint with the same fingerprint at or below ``max_steps`` (so
raising ``max_steps`` continues). Every other checkpoint is stale: it is deleted, and the log says why
(which settings changed, the base model or the data), so no stale weights survive a changed run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from relightflow.manifest import read_json, write_json

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
SMALL_FILE = 1 << 20  # files up to 1 MiB (configs, indexes, tokenizers) are hashed; weights by size + mtime


@dataclass
class TrainerState:
    """Progress saved with every checkpoint."""

    step: int = 0
    seconds: float = 0.0
    losses: list[list[float]] = field(default_factory=list)  # [step, mean train loss]
    val_losses: list[list[float]] = field(default_factory=list)  # [step, validation loss]
    fingerprint: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- fingerprint


def digest(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _local_model_dir(model: str) -> Path | None:
    """A model folder on disk: the path itself, or a hub id's snapshot in the local Hugging Face cache."""
    if Path(model).exists():
        return Path(model).resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # not cached (or not a repo id): the id is all we know
        return None


def model_identity(model: str | None) -> dict[str, Any] | None:
    """Path or hub id plus a digest of the folder's small files and its weight files' names, sizes, mtimes."""
    if not model:
        return None
    folder = _local_model_dir(model)
    if folder is None:
        return {"id": model, "digest": None}
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(folder).as_posix()
        if rel.split("/")[0].startswith("."):
            continue
        stat = path.stat()
        h.update(rel.encode() + b"\0")
        h.update(
            path.read_bytes() if stat.st_size <= SMALL_FILE else f"{stat.st_size}:{stat.st_mtime_ns}".encode()
        )
    return {"id": model, "digest": h.hexdigest()}


def data_identity(folder: str | None) -> dict[str, str] | None:
    """SHA-256 of each Parquet file of an exported split (or of cached latents)."""
    if not folder:
        return None
    from relightflow.dataset import data_files

    return {Path(f).name: file_sha256(f) for f in data_files(folder)}


def fingerprint(
    config: dict[str, Any], models: list[str | None], train_data: str, latents: str | None
) -> dict:
    """What shaped a run's weights (see the module doc)."""
    return {
        "config": config,
        "models": [model_identity(m) for m in models],
        "data": data_identity(train_data),
        "latents": data_identity(latents),
    }


def mismatch(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Why two fingerprints differ, in words ("" when they are equal)."""
    if not old:
        return "it records no fingerprint (written before fingerprints existed)"
    reasons = []
    old_cfg, new_cfg = old.get("config", {}), new.get("config", {})
    changed = sorted(k for k in old_cfg.keys() | new_cfg.keys() if old_cfg.get(k) != new_cfg.get(k))
    if changed:
        reasons.append(
            "settings changed: " + ", ".join(f"{k} {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}" for k in changed)
        )
    if old.get("models") != new.get("models"):
        reasons.append(f"base model changed: {old.get('models')} -> {new.get('models')}")
    for key in ("data", "latents"):
        before, after = old.get(key) or {}, new.get(key) or {}
        if before != after:
            diff = sorted(f for f in before.keys() | after.keys() if before.get(f) != after.get(f))
            reasons.append(f"training {key} changed ({len(diff)} file(s): {', '.join(diff[:5])})")
    return "; ".join(reasons)


# ---------------------------------------------------------------- checkpoints


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``checkpoint-<step>`` in ``folder``, oldest first (temporary folders ignored)."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        name, _, step = p.name.partition("-")
        if p.is_dir() and name == "checkpoint" and step.isdigit():
            found.append((int(step), p))
    return sorted(found)


def read_state(path: Path) -> TrainerState | None:
    try:
        return TrainerState(**read_json(path / STATE_FILE))
    except (OSError, ValueError, TypeError):
        return None


def select(folder: Path, fp: dict[str, Any], max_steps: int) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(checkpoint to resume or None, [(stale checkpoint, why)])."""
    keep, stale = None, []
    for step, path in reversed(checkpoints(folder)):
        state = read_state(path)
        why = mismatch(state.fingerprint, fp) if state else "it has no readable trainer state"
        if not why and step > max_steps:
            why = f"its step {step} is past max_steps {max_steps}"
        if why:
            stale.append((path, why))
        elif keep is None:
            keep = path
    return keep, stale


def remove_stale(folder: Path, stale: list[tuple[Path, str]]) -> None:
    """Delete stale checkpoints (and unfinished temporary ones), saying why."""
    for path, why in stale:
        log.warning("deleting stale %s: %s", path.name, why)
        shutil.rmtree(path, ignore_errors=True)
    for tmp in folder.glob(".checkpoint-*.tmp") if folder.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)


def save(accelerator, folder: Path, state: TrainerState, extra_files, total_limit: int | None) -> Path:
    """``save_state`` into a temporary folder, add ``extra_files(tmp)`` and the state, rename, prune."""
    final, tmp = folder / f"checkpoint-{state.step}", folder / f".checkpoint-{state.step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    extra_files(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, asdict(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in checkpoints(folder)[: -total_limit or None] if total_limit else []:
            shutil.rmtree(old, ignore_errors=True)
        log.info("saved %s", final)
    accelerator.wait_for_everyone()
    return final
