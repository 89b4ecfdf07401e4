"""Learning-rate schedulers from config: every torch.optim.lr_scheduler by name, plus warmup.

:class:`SchedulerSpec` is a scheduler as data, checked when parsed; :func:`build_scheduler` makes
it for an optimizer. A scheduler spec is ``{name, interval: step|epoch, ...constructor args}``.
Arguments that only restate the length of training (``T_max`` for cosine, ``total_steps`` for
onecycle, ``total_iters`` for polynomial) are filled in from the run's length when left out.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LinearLR, ReduceLROnPlateau, SequentialLR

from ..errors import PyrotrainError
from ..registry import SCHEDULERS, call_with_kwargs, check_kwargs, check_typed_kwargs
from ..schema import Named, coerce, parse_named

INTERVALS = ("step", "epoch")
WARMUP_ARGS = ("warmup_steps", "start_factor", "then")


@dataclass(frozen=True)
class SchedulerSpec:
    """A learning-rate scheduler: a registered name (or ``warmup``), when it steps, its
    constructor arguments, and the config key it came from (for messages)."""

    name: str
    interval: str = "step"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    key: str = "scheduler"
    then: SchedulerSpec | None = None  # warmup only: what follows it, parsed with it

    @property
    def needs_metric(self) -> bool:
        return self.name == "plateau"

    @classmethod
    def parse(cls, node: Any, key: str) -> SchedulerSpec | None:
        """``None``, ``"none"`` or ``{name: none}`` mean no scheduler."""
        if node is None or node == "none":
            return None
        named = node if isinstance(node, Named) else parse_named(node, key)
        if named.name == "none":
            return None
        args = dict(named.kwargs)
        interval = args.pop("interval", "step")
        if interval not in INTERVALS:
            raise PyrotrainError(
                "unknown scheduler interval",
                key=f"{key}.interval",
                value=interval,
                choices=INTERVALS,
            )
        then = None
        if named.name == "warmup":
            then = _check_warmup(args, key)
        else:
            cls_ = SCHEDULERS.get(named.name, f"{key}.name")
            check_kwargs(cls_, args, key, n_positional=1)
            check_typed_kwargs(cls_, args, key)
            _check_ranges(args, key)
        spec = cls(name=named.name, interval=interval, args=args, key=key, then=then)
        spec._dry_run()
        return spec

    def _dry_run(self) -> None:
        """Build and step the scheduler on a throwaway optimizer, so that an argument that only
        fails when the scheduler steps (``gamma=abc``) is refused before training."""
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scheduler = build_scheduler(self, opt, 100)
                for _ in range(3):
                    opt.step()
                    step_scheduler(scheduler, 1.0)
        except PyrotrainError:
            raise
        except Exception as e:
            raise PyrotrainError(
                f"the '{self.name}' scheduler fails with these arguments: {type(e).__name__}: {e}",
                key=self.key,
                value=self.args,
            ) from e


# Bounds of torch schedulers' arguments that their annotations do not carry: a period or length
# below 1 or a factor at or below 0 makes a schedule that runs but is not what anyone meant
# (StepLR with step_size=-5 decays the rate at every step).
_ARG_BOUNDS: dict[str, dict[str, Any]] = {
    "step_size": {"minimum": 1},
    "T_max": {"minimum": 1},
    "T_0": {"minimum": 1},
    "T_mult": {"minimum": 1},
    "total_iters": {"minimum": 1},
    "total_steps": {"minimum": 1},
    "step_size_up": {"minimum": 1},
    "patience": {"minimum": 0},
    "cooldown": {"minimum": 0},
    "gamma": {"minimum": 0, "exclusive": True},
    "factor": {"minimum": 0, "exclusive": True},
    "eta_min": {"minimum": 0},
}


def _check_ranges(args: dict[str, Any], key: str) -> None:
    for name, bounds in _ARG_BOUNDS.items():
        value = args.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            coerce(value, type(value), f"{key}.{name}", bounds)


def _check_warmup(args: dict[str, Any], key: str) -> SchedulerSpec | None:
    """Check warmup's arguments; return the scheduler that follows it, if any."""
    for name in args:
        if name not in WARMUP_ARGS:
            raise PyrotrainError(
                f"warmup takes no argument '{name}'",
                key=f"{key}.{name}",
                value=args[name],
                choices=[*WARMUP_ARGS, "interval"],
            )
    steps = args.get("warmup_steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise PyrotrainError(
            "warmup needs a positive integer 'warmup_steps'", key=f"{key}.warmup_steps", value=steps
        )
    inner = SchedulerSpec.parse(args.get("then"), f"{key}.then")
    if inner is not None and (inner.needs_metric or inner.name == "warmup"):
        raise PyrotrainError(
            "warmup cannot be followed by this scheduler", key=f"{key}.then.name", value=inner.name
        )
    return inner


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
    ``spec`` was checked when it was parsed (:class:`SchedulerSpec`)."""
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
