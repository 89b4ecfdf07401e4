"""What an optimizer stack is made of, as data: groups of parameters, each with an optimizer, a
scheduler and clipping, and the parameters DCTAdam should see as time series.

The ``optim`` config section (and the top-level ``scheduler``, every group's default) is checked
here, through :func:`pyrotrain.schema.parse`, before anything is built: unknown optimizers or
arguments, non-positive rates, a schedule on an optimizer whose step size is not ``lr``, scheduler
arguments that fail when the scheduler steps.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import PyrotrainError
from ..registry import OPTIMIZERS, SCHEDULERS, check_kwargs, check_typed_kwargs, rate_key
from ..schema import Named, coerce, parse, parse_named, setting

INTERVALS = ("step", "epoch")
WARMUP_ARGS = ("warmup_steps", "start_factor", "then")
# A group without a scheduler key takes the top-level ``scheduler``; ``scheduler: none`` has none.
_INHERIT = "inherit"


class Pattern:
    """A glob (``AutoNormal.locs.*``) or, with a ``regex:`` prefix, a regular expression that
    must match the whole parameter name."""

    def __init__(self, text: str, key: str):
        if not isinstance(text, str) or not text:
            raise PyrotrainError(
                "a parameter pattern must be a non-empty string", key=key, value=text
            )
        self.text = text
        if text.startswith("regex:"):
            try:
                self._regex = re.compile(text[len("regex:") :])
            except re.error as e:
                raise PyrotrainError(
                    f"not a valid regular expression ({e})", key=key, value=text
                ) from e
        else:
            self._regex = re.compile(fnmatch.translate(text))

    def matches(self, name: str) -> bool:
        return self._regex.fullmatch(name) is not None

    def __repr__(self) -> str:
        return repr(self.text)


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
        from .schedulers import build_scheduler, step_scheduler

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


@dataclass(frozen=True)
class ClipConfig:
    SECTION: ClassVar[str] = "clip"

    norm: float | None = setting(
        "clip the group's gradient norm (L2, over all its parameters) to this",
        default=None,
        minimum=0,
        exclusive=True,
    )
    value: float | None = setting(
        "clip every gradient element to [-value, value]", default=None, minimum=0, exclusive=True
    )


@dataclass(frozen=True)
class GroupConfig:
    """One parameter group as written in YAML (``optim.groups.NAME``)."""

    SECTION: ClassVar[str] = "group"

    params: list[str] = setting(
        "glob patterns (or regex:...) over Pyro parameter names; first matching group wins",
        default_factory=lambda: ["*"],
        one_or_list=True,
    )
    optimizer: Named | None = setting(
        "the group's optimizer: {name: NAME, ...its arguments}", default=None
    )
    scheduler: Named | None = setting(
        "the group's own scheduler (none: no scheduler); default: the top-level scheduler",
        default=Named(_INHERIT),
    )
    clip: ClipConfig | None = setting("gradient clipping before the optimizer step", default=None)
    frozen: bool = setting("never update these parameters", default=False)
    sparse: bool = setting(
        "update only the rows of large parameters that a step touched (adagrad_rmsprop: the "
        "dense result; adam, clipped_adam: lazy, as torch.optim.SparseAdam); docs/optimizers.md",
        default=False,
    )
    optional: bool = setting("no error when the group matches no parameter", default=False)

    def check(self, key: str) -> None:
        for i, text in enumerate(self.params):
            Pattern(text, f"{key}.params.{i}")
        if self.frozen:
            return
        if self.optimizer is None:
            raise PyrotrainError(
                "a group needs an optimizer (or frozen: true)", key=f"{key}.optimizer"
            )
        name, args = self.optimizer.name, self.optimizer.kwargs
        cls = OPTIMIZERS.get(name, f"{key}.optimizer.name")
        check_kwargs(cls, args, f"{key}.optimizer", n_positional=1)
        if self.sparse and OPTIMIZERS.fact(name, "sparse") is None:
            raise PyrotrainError(
                f"optimizer '{name}' has no row-sparse variant",
                key=f"{key}.sparse",
                value=True,
                choices=[n for n in OPTIMIZERS.names() if OPTIMIZERS.fact(n, "sparse")],
                hint="Use one of these optimizers, or sparse: false",
            )
        rate = rate_key(name, f"{key}.optimizer.name")
        if rate is not None and rate in args:
            value = args[rate]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise PyrotrainError(
                    f"must be a positive number (the step size of {name})",
                    key=f"{key}.optimizer.{rate}",
                    value=value,
                )


@dataclass(frozen=True)
class DCTMarkConfig:
    """Parameters DCTAdam updates in the frequency domain: those of the sites inside a plate
    (as pyro.contrib.forecast marks them), or those matching name patterns, with their time dim."""

    SECTION: ClassVar[str] = "DCT mark"

    plate: str | None = setting("a plate name", default=None)
    params: list[str] | None = setting("patterns over names", default=None, one_or_list=True)
    dim: int = setting("the time dim of params matched by name (negative)", default=-1)

    def check(self, key: str) -> None:
        if (self.plate is None) == (self.params is None):
            raise PyrotrainError(
                "a DCT mark is {plate: NAME} or {params: [PATTERNS], dim: -1}",
                key=key,
                value=dataclasses.asdict(self),
            )
        if self.plate is not None and self.dim != -1:
            raise PyrotrainError("a plate mark takes no dim", key=f"{key}.dim", value=self.dim)
        if self.dim >= 0:
            raise PyrotrainError(
                "the DCT time dim must be a negative integer", key=f"{key}.dim", value=self.dim
            )


@dataclass(frozen=True)
class OptimConfig:
    """The ``optim`` section."""

    groups: dict[str, GroupConfig] = setting("group name -> group settings (ordered)")
    lr: float | None = setting(
        "a shortcut the optim configs interpolate as their groups' step size", default=None
    )
    dct: list[DCTMarkConfig] | None = setting("DCTAdam's time-series parameters", default=None)

    def check(self, key: str) -> None:
        if not self.groups:
            raise PyrotrainError(
                "optim.groups must map group names to group settings",
                key=f"{key}.groups",
                value=self.groups,
            )


@dataclass(frozen=True)
class GroupSpec:
    """A group as the stack uses it: compiled patterns, the optimizer's name and arguments, its
    resolved scheduler, clipping, and the name of its step size (``rate``)."""

    name: str
    patterns: list[Pattern]
    optimizer: str
    optimizer_args: dict[str, Any]
    scheduler: SchedulerSpec | None = None
    clip_norm: float | None = None
    clip_value: float | None = None
    frozen: bool = False
    optional: bool = False
    rate: str | None = None
    sparse: bool = False

    @property
    def key(self) -> str:
        return f"optim.groups.{self.name}"


@dataclass
class DCTMark:
    """Mark parameters for DCTAdam: by name pattern and time dim, or by plate name (the guide is
    then wrapped in pyro.contrib.forecast's MarkDCTParamMessenger)."""

    patterns: list[Pattern] = dataclasses.field(default_factory=list)
    dim: int | None = None
    plate: str | None = None


def group_specs(
    optim: OptimConfig, default_scheduler: SchedulerSpec | None
) -> tuple[list[GroupSpec], list[DCTMark]]:
    """The stack's groups and DCT marks from a parsed ``optim`` section."""
    specs = []
    for name, g in optim.groups.items():
        key = f"optim.groups.{name}"
        if g.scheduler is not None and g.scheduler.name == _INHERIT:
            scheduler = default_scheduler
        else:
            scheduler = SchedulerSpec.parse(g.scheduler, f"{key}.scheduler")
        opt = g.optimizer or Named("frozen")
        rate = None if g.frozen else rate_key(opt.name, f"{key}.optimizer.name")
        if scheduler is not None and not g.frozen and rate != "lr":
            raise PyrotrainError(
                f"learning-rate schedulers adjust 'lr', and {opt.name}'s step size is "
                f"{repr(rate) if rate else 'not a rate'}",
                key=scheduler.key,
                value=scheduler.name,
                hint=f"Use scheduler: none for group '{name}'",
            )
        clip = g.clip or ClipConfig()
        specs.append(
            GroupSpec(
                name=name,
                patterns=[Pattern(p, f"{key}.params") for p in g.params],
                optimizer=opt.name,
                optimizer_args=dict(opt.kwargs),
                scheduler=scheduler,
                clip_norm=clip.norm,
                clip_value=clip.value,
                frozen=g.frozen,
                optional=g.optional,
                rate=rate,
                sparse=g.sparse and not g.frozen,
            )
        )
    marks = [
        DCTMark(plate=m.plate)
        if m.plate is not None
        else DCTMark(
            patterns=[Pattern(p, f"optim.dct.{i}.params") for p in m.params or []], dim=m.dim
        )
        for i, m in enumerate(optim.dct or [])
    ]
    return specs, marks


def parse_groups(optim: Any, scheduler: Any = None) -> tuple[list[GroupSpec], list[DCTMark]]:
    """Parse an ``optim`` section (and the top-level ``scheduler``, every group's default)."""
    return group_specs(
        parse(OptimConfig, optim, "optim"), SchedulerSpec.parse(scheduler, "scheduler")
    )
