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
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import PyrotrainError
from ..registry import OPTIMIZERS, check_kwargs, rate_key
from ..schema import Named, parse, setting
from .schedulers import SchedulerSpec

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
