"""Crash-safe checkpoints and exact resume.

A checkpoint is one ``torch.save`` file, ``checkpoints/step-00000010.pt`` in the run directory,
holding everything the next step depends on: the Pyro param store, every group's optimizer and
scheduler state, the step and the number of minibatches consumed (the position in the seeded data
order), the loop's own state (smoothed loss, the epoch's losses, the count of skipped steps) and
the early-stopping monitor's, the RNG states of every rank (torch, python, numpy, CUDA:
:mod:`pyrotrain.rng`) and the config it was trained with.

Files are written atomically (:mod:`pyrotrain.io`: temporary file, fsync, rename, fsync of the
directory), so a crash or SIGKILL during a write leaves the previous checkpoints intact; the last
``keep`` are kept.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path
from typing import Any, TypeVar

import torch

from .errors import PyrotrainError
from .io import atomic_write, remove_stale_temporaries, write_text
from .params import create_params, load_param_values
from .rng import set_rng_state

FORMAT = 1
_State = TypeVar("_State")
DIRNAME = "checkpoints"
BEST = "best.pt"
_NAME = re.compile(r"^step-(\d+)\.pt$")

# The parts of a config a checkpoint's state depends on: resuming with any of them changed would
# train a different model, so it is refused. Everything else (steps, lr, logging, ...) may change.
_SHAPE_KEYS = ("model", "data", "guide")
_TRAINER_SHAPE_KEYS = ("batch_size", "dtype")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / DIRNAME / f"step-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """The checkpoint files in ``directory`` (a run dir or its checkpoints/), newest first."""
    if (directory / DIRNAME).is_dir():
        directory = directory / DIRNAME
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(payload: dict[str, Any], run_dir: Path, keep: int) -> Path:
    """Write ``payload`` atomically as the checkpoint of ``payload['step']``; prune to ``keep``."""
    path = checkpoint_path(run_dir, payload["step"])
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, "step-*")
    atomic_write(path, lambda f: torch.save(payload, f))
    for old in list_checkpoints(path.parent)[keep:]:
        old.unlink(missing_ok=True)
    return path


def save_best(payload: dict[str, Any], run_dir: Path) -> Path:
    """Write ``checkpoints/best.pt``: the parameters at the monitor's best value so far. It is
    kept apart from the step checkpoints (never pruned, never picked by resume)."""
    path = run_dir / DIRNAME / BEST
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, BEST)
    return atomic_write(path, lambda f: torch.save(payload, f))


# -- what a checkpoint holds ----------------------------------------------------------------------


def versions() -> dict[str, str]:
    """The versions of pyrotrain and what it runs on, as summary.json and checkpoints record."""
    import platform

    import hydra
    import omegaconf
    import pyro

    from ._version import __version__

    return {
        "pyrotrain": __version__,
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
        "python": platform.python_version(),
    }


def step_payload(
    *,
    step: int,
    loop: dict[str, Any],
    smoothed: dict[str, Any],
    optim: dict[str, Any],
    optimizer_args: dict[str, Any],
    rng: list[dict[str, Any]],
    shape: dict[str, Any],
    config: dict[str, Any],
) -> dict[str, Any]:
    """A step checkpoint: everything the next step depends on (see the module's docstring), with
    the param store as it is now. ``loop`` is the loop's state as plain values, ``rng`` every
    rank's RNG state (rank 0's first)."""
    import pyro

    return {
        "format": FORMAT,
        "step": step,
        "loop": loop,
        "smoothed": smoothed,
        "param_store": pyro.get_param_store().get_state(),
        "optim": optim,
        "optimizer_args": optimizer_args,
        "rng": rng,
        "shape": shape,
        "config": config,
        "versions": versions(),
    }


def best_payload(
    *,
    step: int | None,
    monitor: str | None,
    value: float | None,
    param_store: dict[str, Any],
    config: dict[str, Any],
) -> dict[str, Any]:
    """best.pt's contents: the parameters at the monitor's best ``value`` (at ``step``) only."""
    return {
        "format": FORMAT,
        "kind": "best",
        "step": step,
        "monitor": monitor,
        "value": value,
        "param_store": param_store,
        "config": config,
        "versions": versions(),
    }


def loop_entry(*states: Any) -> dict[str, Any]:
    """A checkpoint's ``loop``: the loop's state and the early-stopping monitor's (dataclasses),
    as one dict of their fields, as checkpoints of format 1 have always held them."""
    entry: dict[str, Any] = {}
    for state in states:
        entry.update(dataclasses.asdict(state))
    return entry


def from_loop_entry(cls: type[_State], entry: dict[str, Any]) -> _State:
    """The state ``cls`` (a dataclass) restored from a checkpoint's ``loop``: its own fields, the
    defaults for those an older checkpoint lacks."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in entry.items() if k in names})


def rng_of_rank(payload: dict[str, Any], rank: int) -> dict[str, Any]:
    """The RNG state that ``rank`` resumes with: its own (ranks draw the same samples); a rank the
    saved run did not have takes rank 0's."""
    rng = payload["rng"]
    return rng[rank] if rank < len(rng) else rng[0]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read one checkpoint file; a corrupt, truncated or foreign file raises a clear error."""
    try:
        # Checkpoints hold Pyro constraint objects, so they are not weights-only: load only
        # checkpoints you trust, as with any pickle.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise PyrotrainError(
            f"the checkpoint {path} cannot be read; it is corrupt or truncated "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})",
            key="trainer.resume",
            value=str(path),
            hint="Resume from an earlier checkpoint in the same directory, or from the run "
            "directory with trainer.resume=auto, which skips unreadable files",
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PyrotrainError(
            f"{path} is not a pyrotrain checkpoint (format {FORMAT})",
            key="trainer.resume",
            value=str(path),
        )
    return payload


def find_resume(resume: str, run_dir: Path | None) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint that ``trainer.resume`` names, loaded: a file, or the newest readable one in
    a run directory (``auto``: this job's run directory, and None when it holds none yet)."""
    if resume == "auto":
        if run_dir is None:
            return None
        directory = run_dir
    else:
        directory = Path(resume).expanduser()
        if not directory.exists():
            raise PyrotrainError(
                "there is no such file or directory to resume from",
                key="trainer.resume",
                value=resume,
                hint="Give a run directory, a checkpoint file (checkpoints/step-*.pt) or auto",
            )
        if directory.is_file():
            payload = load_checkpoint(directory)
            if payload.get("kind") == "best":
                raise PyrotrainError(
                    f"{directory} holds the best parameters only, not the optimizer and data "
                    "state a run continues from",
                    key="trainer.resume",
                    value=resume,
                    hint="Resume from a step checkpoint (checkpoints/step-*.pt) or the run "
                    "directory; use best.pt with pyrotrain-predict --checkpoint best",
                )
            return directory, payload
    candidates = list_checkpoints(directory)
    if not candidates:
        if resume == "auto":
            return None
        raise PyrotrainError(
            f"{directory} holds no checkpoint ({DIRNAME}/step-*.pt)",
            key="trainer.resume",
            value=resume,
            hint="Checkpoints are written every trainer.checkpoint_every steps and at the end",
        )
    errors = []
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except PyrotrainError as e:
            errors.append(e)
            warnings.warn(
                f"skipping {path}: it cannot be read; trying the one before it", stacklevel=2
            )
    raise PyrotrainError(
        f"none of the {len(candidates)} checkpoints in {directory} can be read "
        f"(newest: {errors[0].problem})",
        key="trainer.resume",
        value=resume,
    )


def restore(run: Any, payload: dict[str, Any], batch: Any) -> dict[str, Any]:
    """Load a checkpoint's state into the param store, ``run``'s stack and the RNGs; returns the
    optimizer arguments that differ from the checkpoint's (group -> key -> (was, now)).

    Models and guides create their parameters lazily (autoguides drawing random numbers as they
    do, ``pyro.module`` registering the module's own tensors), so one ELBO evaluation on the first
    ``batch`` creates them as in a fresh run; the saved values are then copied into those very
    tensors, and the optimizer state and random number generators restored.
    """
    params = create_params(run, batch)
    where = str(run.resume[0]) if run.resume else None
    load_param_values(payload["param_store"], "trainer.resume", where)
    run.stack.assign(params)
    run.stack.load_state_dict(payload["optim"])
    changed = run.stack.apply_changed_args(payload["optimizer_args"])
    set_rng_state(rng_of_rank(payload, run.backend.rank))
    return changed


# -- what must match between a checkpoint and the config resuming it ------------------------------


def shape_of(config: dict[str, Any], groups: dict[str, dict], world_size: int) -> dict[str, Any]:
    """The parts of a run that its saved state depends on (see ``_SHAPE_KEYS``)."""
    trainer = config.get("trainer") or {}
    return {
        **{k: config.get(k) for k in _SHAPE_KEYS},
        "trainer": {k: trainer.get(k) for k in _TRAINER_SHAPE_KEYS},
        "optim.groups": {
            # "sparse" only where set, so that older checkpoints keep their shape
            name: {k: g[k] for k in ("params", "optimizer", "scheduler", "dct", "sparse") if k in g}
            for name, g in groups.items()
        },
        "world_size": world_size,
    }


def first_difference(saved: Any, now: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key at which two nested configs differ, with both values."""
    if isinstance(saved, dict) and isinstance(now, dict):
        for k in list(saved) + [k for k in now if k not in saved]:
            sub = f"{key}.{k}" if key else str(k)
            if k not in saved or k not in now:
                return sub, saved.get(k, "<absent>"), now.get(k, "<absent>")
            found = first_difference(saved[k], now[k], sub)
            if found:
                return found
        return None
    return None if saved == now else (key, saved, now)


def _without_world_size(shape: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in shape.items() if k != "world_size"}


def check_compatible(payload: dict[str, Any], shape: dict[str, Any], path: Path, seed: int) -> None:
    """Refuse to resume from ``payload`` (read from ``path``) a run whose shape or seed differs.

    The seed is read from the checkpoint's plain ``config`` rather than its ``shape``, so that
    checkpoints written before the seed was checked (their shape has no seed) still load."""
    # the number of ranks may change: the data is re-sharded on resume (Trainer._start)
    difference = first_difference(_without_world_size(payload["shape"]), _without_world_size(shape))
    if difference is not None:
        key, was, now = difference
        raise PyrotrainError(
            f"the checkpoint {path} was trained with {key}={was!r}, this config has {now!r}; "
            "its saved state does not fit this run",
            key=key,
            value=now,
            hint="Resume with the same model, data, guide, optimizer groups, batch size and dtype "
            "(learning rates, steps, logging and the number of ranks may change), or start "
            "afresh in a new run directory without trainer.resume",
        )
    saved = (payload.get("config") or {}).get("seed")
    if saved is not None and saved != seed:
        raise PyrotrainError(
            f"the checkpoint {path} was trained with seed={saved}, this config has seed={seed}; "
            "the resumed run would take another minibatch order than the one it continues",
            key="seed",
            value=seed,
            hint=f"Resume with seed={saved}, or start afresh in a new run directory without "
            "trainer.resume",
        )


# -- a new run does not write into another run's outputs ------------------------------------------


def earlier_outputs(run_dir: Path) -> list[str]:
    """What ``run_dir`` holds of a run's outputs (Hydra's .hydra/ and log do not count, nor an
    empty metrics.jsonl, which a run that failed before its first row leaves)."""
    found = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append("metrics.jsonl")
    if list_checkpoints(run_dir / DIRNAME):
        found.append(f"{DIRNAME}/step-*.pt")
    found += [name for name in ("params.pt", "summary.json") if (run_dir / name).is_file()]
    return found


def _within(path: Path, directory: Path) -> bool:
    path, directory = path.expanduser().resolve(), directory.expanduser().resolve()
    return path == directory or directory in path.parents


def check_run_dir(run_dir: Path, resume: str | None) -> None:
    """Refuse to start a run in a directory that holds another run's outputs: its metrics rows,
    checkpoints and parameters would mix with this run's. Continuing the run that is there
    (``trainer.resume=auto``, or a checkpoint of this directory) is allowed."""
    if resume == "auto" or (resume is not None and _within(Path(resume), run_dir)):
        return
    found = earlier_outputs(run_dir)
    if not found:
        return
    what = f"the run directory {run_dir} already holds another run's outputs ({', '.join(found)})"
    if resume is None:
        raise PyrotrainError(
            f"{what}; a new run there would mix its metrics and checkpoints with them",
            hint="To continue that run, add trainer.resume=auto; to start afresh, choose another "
            "directory (hydra.run.dir=..., or hydra.sweep.dir=... for a sweep) or remove this one",
        )
    raise PyrotrainError(
        f"{what}; resuming {resume} there would mix this run's metrics and checkpoints with them",
        key="trainer.resume",
        value=resume,
        hint="Resume into another directory (hydra.run.dir=...), or continue the run that is "
        "there with trainer.resume=auto",
    )


def prune_metrics(path: Path, last_step: int) -> None:
    """Drop the metrics rows after ``last_step`` (written before a crash, replayed on resume)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            step = json.loads(line).get("step", 0)
        except (json.JSONDecodeError, AttributeError):
            continue  # a half-written last line
        if step <= last_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    write_text(path, "".join(kept))
