"""Crash-safe checkpoints: written atomically, the last k kept, corrupt ones detected.

A checkpoint is one ``torch.save`` file, ``checkpoints/step_00000100.pt`` in the run directory,
written to a temporary file, flushed to disk and renamed into place, so a crash (even SIGKILL)
while writing leaves the previous checkpoints intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .errors import PyrotrainError

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")
FORMAT_VERSION = 1


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; keep the newest ``keep``."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT_VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint file; a truncated or corrupt file raises PyrotrainError naming it."""
    path = Path(path)
    if not path.is_file():
        raise PyrotrainError("no such checkpoint file", key="trainer.resume", value=str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a damaged zip/pickle
        raise PyrotrainError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e})",
            key="trainer.resume",
            value=str(path),
            hint="Resume from an earlier checkpoint, or use trainer.resume=auto to take the newest "
            "one that loads",
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise PyrotrainError(
            f"{path} is not a pyrotrain checkpoint", key="trainer.resume", value=str(path)
        )
    return state


def find_resume(resume: str, run_dir: Path | None) -> tuple[Path, dict[str, Any]] | None:
    """Resolve ``trainer.resume``: ``auto`` (newest good checkpoint of ``run_dir``, if any), a run
    directory (its newest good checkpoint) or a checkpoint file."""
    if resume == "auto":
        if run_dir is None:
            return None
        return _newest_good(run_dir, required=False)
    target = Path(resume)
    if target.is_dir():
        return _newest_good(target, required=True)
    return target, load_checkpoint(target)


def _newest_good(run_dir: Path, required: bool) -> tuple[Path, dict[str, Any]] | None:
    errors = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except PyrotrainError as e:
            errors.append(str(e))
    if required or errors:
        detail = f" ({len(errors)} corrupt: {errors[0]})" if errors else ""
        raise PyrotrainError(
            f"no loadable checkpoint in {run_dir}{detail}", key="trainer.resume", value=str(run_dir)
        )
    return None


def fingerprint(sections: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(sections, sort_keys=True, default=str).encode()).hexdigest()


def first_difference(saved: Any, current: Any, prefix: str = "") -> str | None:
    """The dotted key of the first difference between two plain config trees."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved or key not in current:
                return where
            found = first_difference(saved[key], current[key], where)
            if found:
                return found
        return None
    return None if saved == current else prefix or "(root)"
