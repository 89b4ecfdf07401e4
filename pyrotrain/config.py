"""Typed view of the composed Hydra config, with validation whose errors name the key and the fix.

Hydra composes YAML; this module checks each section against a dataclass schema before anything
heavy runs. The checks are deliberately plain Python: each field's type, allowed choices and bounds
live in its dataclass metadata, so the error for ``trainer.steps=abc`` names the key, the value and
what would be accepted.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from .errors import PyrotrainError


def _meta(
    help: str, *, minimum: float | None = None, exclusive: bool = False, below: float | None = None
) -> dict:
    """``minimum`` (``exclusive``: strictly above it) and ``below`` (strictly) bound numbers."""
    return {"help": help, "minimum": minimum, "exclusive": exclusive, "below": below}


@dataclass(frozen=True)
class TrainerConfig:
    steps: int | None = field(default=1000, metadata=_meta("number of optimizer steps", minimum=1))
    epochs: int | None = field(
        default=None,
        metadata=_meta("number of passes over the data; when set, overrides steps", minimum=1),
    )
    batch_size: int | None = field(
        default=None, metadata=_meta("minibatch size; null means the full data", minimum=1)
    )
    device: Literal["cpu", "cuda", "auto"] = field(
        default="cpu", metadata=_meta("where tensors live; auto picks cuda when available")
    )
    dtype: Literal["float32", "float64"] = field(
        default="float32", metadata=_meta("floating-point precision of data and parameters")
    )
    log_every: int = field(
        default=10, metadata=_meta("steps between metrics rows and plain log lines", minimum=1)
    )
    progress: Literal["auto", "bar", "plain", "none"] = field(
        default="auto",
        metadata=_meta("auto: a progress bar on a terminal, plain lines otherwise"),
    )
    smoothing: float = field(
        default=0.9,
        metadata=_meta(
            "weight of the past in the exponentially smoothed loss (0 to <1)", minimum=0, below=1
        ),
    )
    objective: str = field(
        default="smoothed_loss",
        metadata=_meta(
            "what a run returns to a sweeper: smoothed_loss, final_loss or eval.<metric>"
        ),
    )
    eval_num_samples: int = field(
        default=100, metadata=_meta("posterior samples drawn for the evaluation", minimum=1)
    )
    checkpoint_every: int | None = field(
        default=None,
        metadata=_meta(
            "steps between checkpoints (one is always written at the end); null: only the end",
            minimum=1,
        ),
    )
    keep_checkpoints: int = field(
        default=3, metadata=_meta("how many of the newest checkpoints to keep", minimum=1)
    )
    resume: str | None = field(
        default=None,
        metadata=_meta(
            "a run directory or checkpoint file to continue from, or auto (this run "
            "directory's newest readable checkpoint, if any)"
        ),
    )
    nan_policy: Literal["stop", "skip", "reduce_lr"] = field(
        default="stop",
        metadata=_meta(
            "on a non-finite loss or gradient: stop (exit 1, checkpoints kept), skip the step, "
            "or skip it and reduce_lr of the groups at fault"
        ),
    )
    max_bad_steps: int = field(
        default=10,
        metadata=_meta(
            "skip and reduce_lr stop after this many non-finite steps in a row", minimum=1
        ),
    )
    nan_lr_factor: float = field(
        default=0.5,
        metadata=_meta(
            "reduce_lr multiplies the learning rate by this (0 to 1)",
            minimum=0,
            exclusive=True,
            below=1,
        ),
    )


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or null)"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _coerce(value: Any, tp: Any, key: str, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise PyrotrainError(
                f"not a valid choice ({meta['help']})", key=key, value=value, choices=args
            )
        return value
    if type(None) in args:
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, meta)
    ok = (
        (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is bool and isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise PyrotrainError(
            f"{key} must be {_type_name(tp)} ({meta['help']})", key=key, value=value
        )
    if tp is float:
        value = float(value)
    minimum = meta.get("minimum")
    if minimum is not None and (value <= minimum if meta.get("exclusive") else value < minimum):
        bound = f"greater than {minimum}" if meta.get("exclusive") else f"at least {minimum}"
        raise PyrotrainError(f"{key} must be {bound} ({meta['help']})", key=key, value=value)
    below = meta.get("below")
    if below is not None and not value < below:
        raise PyrotrainError(
            f"{key} must be less than {below} ({meta['help']})", key=key, value=value
        )
    return value


def parse_section(cls: type, node: Any, key: str) -> Any:
    """Check a config node against dataclass ``cls``; unknown keys and bad values raise."""
    if node is None:
        node = {}
    node = to_plain(node, key)
    if not isinstance(node, dict):
        raise PyrotrainError(f"{key} must be a mapping", key=key, value=node)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in node:
        if name not in fields:
            raise PyrotrainError(
                f"'{name}' is not a {key} setting",
                key=f"{key}.{name}",
                value=node[name],
                choices=list(fields),
            )
    values = {
        name: _coerce(node[name], hints[name], f"{key}.{name}", dict(f.metadata))
        for name, f in fields.items()
        if name in node
    }
    return cls(**values)


def to_plain(node: Any, key: str) -> Any:
    """Resolve a config node to plain Python, naming the key of any value left as ``???``."""
    if not isinstance(node, (DictConfig, ListConfig)):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        full_key = f"{key}.{e.key}" if e.key is not None else key
        raise PyrotrainError(
            "this setting is required and has no value",
            key=full_key,
            hint=f"Set it on the command line, e.g. {full_key}=...",
        ) from e


def named_section(node: Any, key: str) -> tuple[str, dict]:
    """Split a ``{name: X, ...kwargs}`` section into the name and the remaining arguments."""
    node = to_plain(node, key)
    if isinstance(node, str):
        return node, {}
    if not isinstance(node, dict) or "name" not in node:
        raise PyrotrainError(f"{key} must be a mapping with a 'name' key", key=key, value=node)
    node = dict(node)
    return node.pop("name"), node


def field_help(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def check_trainer_against_data(trainer: TrainerConfig, n_rows: int) -> None:
    if trainer.batch_size is not None and trainer.batch_size > n_rows:
        raise PyrotrainError(
            f"the batch is larger than the training data ({n_rows} rows)",
            key="trainer.batch_size",
            value=trainer.batch_size,
            hint=f"Use at most {n_rows}, or null for the full data",
        )
