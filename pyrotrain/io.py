"""Files are written one way: to a temporary file beside the target, fsynced, renamed over it, and
the directory fsynced, so that a crash or SIGKILL mid-write leaves the old file or the new one,
never half of one. Checkpoints, summaries, params and rewritten metrics all go through here."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TMP_MARK = ".tmp"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary binary file, then move it to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def remove_stale_temporaries(directory: Path, name_glob: str = "*") -> None:
    """Remove temporary files that a process killed mid-write left in ``directory``."""
    for stale in directory.glob(f".{name_glob}{TMP_MARK}*"):
        stale.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> Path:
    data = (json.dumps(obj, indent=2) + "\n").encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: Path, text: str) -> Path:
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def save_params(path: Path) -> Path:
    """The Pyro param store, as ``pyro.get_param_store().save`` writes it."""
    import pyro
    import torch

    store = pyro.get_param_store()
    return atomic_write(path, lambda f: torch.save(store.get_state(), f))
