"""Learning-rate schedulers from config: every torch.optim.lr_scheduler by name, plus warmup.

A scheduler spec is ``{name, interval: step|epoch, ...constructor args}``. Arguments that only
restate the length of training (``T_max`` for cosine, ``total_steps`` for onecycle,
``total_iters`` for polynomial) are filled in from the run's length when left out.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LinearLR, ReduceLROnPlateau, SequentialLR

from ..errors import PyrotrainError
from ..registry import SCHEDULERS, call_with_kwargs

if TYPE_CHECKING:
    from .spec import SchedulerSpec

# Required constructor arguments that only say how long training lasts.
_LENGTH_ARGS = {
    "cosine": "T_max",
    "onecycle": "total_steps",
    "polynomial": "total_iters",
}


def build_scheduler(
    spec: SchedulerSpec, optimizer: torch.optim.Optimizer, length: int | None
) -> Any:
    """Build the scheduler for ``optimizer``; ``length`` is how many times it will be stepped.
    ``spec`` was checked when it was parsed (:class:`~pyrotrain.optim.spec.SchedulerSpec`)."""
    if spec.name == "warmup":
        return _warmup(spec, optimizer, length)
    cls = SCHEDULERS.get(spec.name, f"{spec.key}.name")
    args = dict(spec.args)
    length_arg = _LENGTH_ARGS.get(spec.name)
    if length_arg and length_arg not in args:
        if length is None:
            raise PyrotrainError(
                f"the '{spec.name}' scheduler needs '{length_arg}'", key=f"{spec.key}.{length_arg}"
            )
        args[length_arg] = length
    if spec.name == "lambda" or spec.name == "multiplicative":
        args["lr_lambda"] = _as_function(args.get("lr_lambda"), f"{spec.key}.lr_lambda")
    try:
        return call_with_kwargs(cls, args, spec.key, optimizer)
    except (TypeError, ValueError) as e:
        raise PyrotrainError(
            f"cannot build the '{spec.name}' scheduler: {e}", key=spec.key, value=spec.args
        ) from e


def _warmup(spec: SchedulerSpec, optimizer: torch.optim.Optimizer, length: int | None) -> Any:
    """Linear warmup from ``start_factor * lr`` over ``warmup_steps``, then ``spec.then``."""
    steps = spec.args["warmup_steps"]
    start_factor = spec.args.get("start_factor", 0.01)
    warm = LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=steps)
    if spec.then is None:
        return warm
    rest = None if length is None else max(1, length - steps)
    after = build_scheduler(spec.then, optimizer, rest)
    return SequentialLR(optimizer, [warm, after], milestones=[steps])


def _as_function(value: Any, key: str) -> Any:
    """``lr_lambda`` as a ``lambda`` expression string or an import path."""
    if callable(value):
        return value
    if isinstance(value, str) and value.strip().startswith("lambda"):
        try:
            fn = eval(value, {"math": math, "__builtins__": {}})  # noqa: S307 (user's own config)
        except SyntaxError as e:
            raise PyrotrainError(
                f"not a valid lambda expression ({e.msg})", key=key, value=value
            ) from e
        return fn
    if isinstance(value, str):
        from ..registry import import_object

        return import_object(value, key)
    raise PyrotrainError(
        "expected a 'lambda step: ...' string or an import path", key=key, value=value
    )


def step_scheduler(scheduler: Any, metric: float | None) -> None:
    if isinstance(scheduler, ReduceLROnPlateau):
        if metric is not None and math.isfinite(metric):
            scheduler.step(metric)
    else:
        scheduler.step()
