"""A job refused for bad input leaves the disk as it found it.

Hydra makes the run directory and writes ``.hydra/*.yaml``, the job's log and (for sweeps)
``multirun.yaml`` before pyrotrain sees the config. :class:`OutputGuard`, a Hydra callback, notes
what those paths held before; when the job then fails validation (exit code 2), :func:`undo` puts
them back: files Hydra created are removed, files it overwrote get their old bytes back, logs
their old length, and directories that did not exist are removed if nothing else is in them.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

_HYDRA_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "multirun.yaml")


@dataclass
class _Snapshot:
    root: Path
    existed: bool
    new_dirs: list[Path] = field(default_factory=list)  # created since, deepest first
    files: dict[str, bytes | None] = field(default_factory=dict)  # relative path -> old bytes
    log_sizes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def take(cls, root: Path) -> _Snapshot:
        root = root.absolute()
        new_dirs = []
        d = root
        while not d.exists() and d != d.parent:
            new_dirs.append(d)
            d = d.parent
        snap = cls(root, root.exists(), new_dirs)
        for rel in _HYDRA_FILES:
            path = root / rel
            snap.files[rel] = path.read_bytes() if path.is_file() else None
        if root.is_dir():
            snap.log_sizes = {p.name: p.stat().st_size for p in root.glob("*.log")}
        return snap


_snapshots: list[_Snapshot] = []


class OutputGuard(Callback):
    """Hydra callback (``hydra.callbacks.output_guard``): snapshot the run or sweep directory."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        _snapshots.append(_Snapshot.take(Path(config.hydra.run.dir)))

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _snapshots.append(_Snapshot.take(Path(config.hydra.sweep.dir)))


def _clear_new_dir(d: Path) -> None:
    """Remove what Hydra (and an aborted start) put in a directory that did not exist before."""
    shutil.rmtree(d / ".hydra", ignore_errors=True)
    for f in [*d.glob("*.log"), d / "metrics.jsonl", d / "metrics.csv"]:
        if f.is_file() and (f.suffix == ".log" or f.stat().st_size == 0):
            f.unlink()
    with contextlib.suppress(OSError):
        d.rmdir()


def _restore_old_dir(snap: _Snapshot) -> None:
    """Give files Hydra overwrote their old bytes, remove those it created, cut logs back."""
    for rel, old in snap.files.items():
        path = snap.root / rel
        if old is not None:
            path.write_bytes(old)
        else:
            path.unlink(missing_ok=True)
    for log in snap.root.glob("*.log"):
        if log.name in snap.log_sizes:
            with open(log, "r+b") as f:
                f.truncate(snap.log_sizes[log.name])
        else:
            log.unlink()
    with contextlib.suppress(OSError):
        (snap.root / ".hydra").rmdir()


def undo(job_dir: Path) -> None:
    """Take back what Hydra wrote for a job that failed validation (see the module doc)."""
    job_dir = job_dir.absolute()
    snap = next(
        (s for s in reversed(_snapshots) if job_dir == s.root or s.root in job_dir.parents), None
    )
    if snap is None:
        # The config did not include pyrotrain's (and its OutputGuard): a directory holding only
        # what Hydra writes for a job is Hydra's, made for this job.
        if job_dir.is_dir() and all(
            p.name == ".hydra" or p.suffix == ".log" for p in job_dir.iterdir()
        ):
            _clear_new_dir(job_dir)
            for d in job_dir.parents:  # outputs/DATE, outputs: only if now empty
                if d == Path.cwd() or not d.is_dir() or any(d.iterdir()):
                    break
                d.rmdir()
        return
    if job_dir != snap.root:  # a sweep's job directory, made for this job
        _clear_new_dir(job_dir)
        if snap.existed:
            _restore_old_dir(snap)
        elif not any(p.name != "multirun.yaml" for p in snap.root.iterdir()):
            (snap.root / "multirun.yaml").unlink(missing_ok=True)
    elif snap.existed:
        _restore_old_dir(snap)
    else:
        _clear_new_dir(job_dir)
    for d in snap.new_dirs:  # deepest first; only what this job created, only if empty
        with contextlib.suppress(OSError):
            d.rmdir()
