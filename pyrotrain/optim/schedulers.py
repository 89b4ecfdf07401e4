"""Learning-rate schedulers from config: every torch.optim.lr_scheduler by name, plus warmup.

A scheduler spec is ``{name, interval: step|epoch, ...constructor args}``. Arguments that only
restate the length of training (``T_max`` for cosine, ``total_steps`` for onecycle,
``total_iters`` for polynomial) are filled in from the run's length when left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.lr_scheduler import LinearLR, ReduceLROnPlateau, SequentialLR

from ..errors import PyrotrainError
from ..registry import SCHEDULERS, call_with_kwargs

INTERVALS = ("step", "epoch")

# Required constructor arguments that only say how long training lasts.
_LENGTH_ARGS = {
    "cosine": "T_max",
    "onecycle": "total_steps",
    "polynomial": "total_iters",
}


@dataclass(frozen=True)
class SchedulerSpec:
    name: str
    interval: str = "step"
    args: dict[str, Any] = field(default_factory=dict)
    key: str = "scheduler"

    @classmethod
    def parse(cls, node: Any, key: str) -> SchedulerSpec | None:
        """``None``, ``"none"`` or ``{name: none}`` mean no scheduler."""
        if node is None or node == "none":
            return None
        if isinstance(node, str):
            node = {"name": node}
        if not isinstance(node, dict) or "name" not in node:
            raise PyrotrainError("a scheduler must be a mapping with a 'name'", key=key, value=node)
        args = dict(node)
        name = args.pop("name")
        if name in (None, "none"):
            return None
        interval = args.pop("interval", "step")
        if interval not in INTERVALS:
            raise PyrotrainError(
                "unknown scheduler interval",
                key=f"{key}.interval",
                value=interval,
                choices=INTERVALS,
            )
        if name != "warmup":
            SCHEDULERS.get(name, f"{key}.name")  # fail early on unknown names
        return cls(name=name, interval=interval, args=args, key=key)

    @property
    def needs_metric(self) -> bool:
        return self.name == "plateau"


def build_scheduler(
    spec: SchedulerSpec, optimizer: torch.optim.Optimizer, length: int | None
) -> Any:
    """Build the scheduler for ``optimizer``; ``length`` is how many times it will be stepped."""
    if "lr" not in optimizer.param_groups[0]:
        raise PyrotrainError(
            f"learning-rate schedulers adjust 'lr', and {type(optimizer).__name__} has none "
            "(AdagradRMSProp's step size is eta)",
            key=f"{spec.key}.name",
            value=spec.name,
            hint="Use scheduler: none for this group",
        )
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
    """Linear warmup from ``start_factor * lr`` over ``warmup_steps``, then ``then``."""
    args = dict(spec.args)
    steps = args.pop("warmup_steps", None)
    start_factor = args.pop("start_factor", 0.01)
    then = args.pop("then", None)
    if args:
        raise PyrotrainError(
            f"warmup takes no argument '{next(iter(args))}'",
            key=f"{spec.key}.{next(iter(args))}",
            choices=["warmup_steps", "start_factor", "then", "interval"],
        )
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise PyrotrainError(
            "warmup needs a positive integer 'warmup_steps'",
            key=f"{spec.key}.warmup_steps",
            value=steps,
        )
    warm = LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=steps)
    inner = SchedulerSpec.parse(then, f"{spec.key}.then")
    if inner is None:
        return warm
    if inner.needs_metric or inner.name == "warmup":
        raise PyrotrainError(
            "warmup cannot be followed by this scheduler",
            key=f"{spec.key}.then.name",
            value=inner.name,
        )
    rest = None if length is None else max(1, length - steps)
    after = build_scheduler(inner, optimizer, rest)
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
