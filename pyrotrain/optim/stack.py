"""The optimizer stack: parameter groups, each with one optimizer, scheduler and clipping.

Pyro creates parameters lazily, so the stack assigns each parameter to the first group whose
patterns match its name the first time the parameter is seen, and adds it to that group's single
torch optimizer (built when the group's first parameter arrives). The stack subclasses
``pyro.optim.PyroOptim`` so ``pyro.infer.SVI(model, guide, stack, elbo)`` works unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pyro
import torch
from pyro.optim import PyroOptim

from ..errors import PyrotrainError, PyrotrainWarning
from ..registry import FOREACH_BY_DEFAULT, OPTIMIZERS, call_with_kwargs
from .schedulers import build_scheduler, step_scheduler
from .spec import DCTMark, GroupSpec, parse_groups


@dataclass
class Group:
    spec: GroupSpec
    params: list[torch.Tensor] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None

    def rate(self) -> float:
        """The current step size (the configured one before the optimizer exists)."""
        key = self.spec.rate
        if key is None:
            return float("nan")
        if self.optimizer is not None:
            return float(self.optimizer.param_groups[0][key])
        return float(self.spec.optimizer_args.get(key, float("nan")))

    def scale_rate(self, factor: float) -> None:
        """Multiply the step size by ``factor`` in the optimizer and in its scheduler's base, so
        that a schedule goes on from the new rate."""
        key = self.spec.rate
        if self.optimizer is None or key is None:
            return
        for pg in self.optimizer.param_groups:
            pg[key] *= factor
            if "initial_lr" in pg:
                pg["initial_lr"] *= factor
        for sched in [self.scheduler, *getattr(self.scheduler, "_schedulers", [])]:
            if sched is not None and hasattr(sched, "base_lrs"):
                sched.base_lrs = [lr * factor for lr in sched.base_lrs]
            if sched is not None and hasattr(sched, "_last_lr"):
                sched._last_lr = [lr * factor for lr in sched._last_lr]


class OptimizerStack(PyroOptim):
    """Ordered parameter groups, each with ONE optimizer over all its parameters.

    Call it like a ``PyroOptim`` (``stack(params)``) to clip and step every group's optimizer;
    call :meth:`step` after each training step and :meth:`end_epoch` after each epoch to advance
    the learning-rate schedulers (as with ``pyro.optim.PyroLRScheduler``), passing the loss for
    ``plateau`` schedulers.

    :param groups: group specs, first match wins (see :func:`parse_groups`).
    :param dct_marks: which parameters DCTAdam should update in the frequency domain.
    :param total_steps: training length in steps, filled into schedulers that need it.
    :param total_epochs: training length in epochs, for ``interval: epoch`` schedulers.
    """

    def __init__(
        self,
        groups: list[GroupSpec],
        dct_marks: Iterable[DCTMark] = (),
        total_steps: int | None = None,
        total_epochs: int | None = None,
    ):
        # PyroOptim's constructor sets up per-parameter machinery we do not use.
        self.groups = [Group(spec) for spec in groups]
        self.dct_marks = list(dct_marks)
        self.total_steps = total_steps
        self.total_epochs = total_epochs
        self._group_of: dict[torch.Tensor, Group] = {}
        self._pending_state: dict[str, dict] = {}
        self._plates_checked = False

    @classmethod
    def from_config(cls, optim: Any, scheduler: Any = None, **kwargs: Any) -> OptimizerStack:
        """A stack from an ``optim`` section as in YAML (a dict or DictConfig) and the default
        ``scheduler`` of its groups; ``kwargs`` go to the constructor."""
        specs, marks = parse_groups(optim, scheduler)
        return cls(specs, marks, **kwargs)

    def mark_guide(self, guide: Any) -> Any:
        """The guide, wrapped so that the parameters it creates inside each plate named by
        ``dct: [{plate: NAME}]`` are marked for DCTAdam (with Pyro's own
        ``pyro.contrib.forecast.util.MarkDCTParamMessenger``). pyrotrain's runs do this; in your
        own SVI script, give SVI ``stack.mark_guide(guide)``."""
        for mark in self.dct_marks:
            if mark.plate is not None:
                from pyro.contrib.forecast.util import MarkDCTParamMessenger  # a costly import

                guide = MarkDCTParamMessenger(mark.plate)(guide)
        return guide

    # -- parameter assignment -------------------------------------------------------------------

    def assign(self, params: Iterable[torch.Tensor]) -> None:
        """Give each parameter not seen before to its group (and that group's optimizer)."""
        new = [p for p in params if p not in self._group_of]
        if not new:
            return
        store = pyro.get_param_store()
        named = sorted(((cast(str, store.param_name(p)), p) for p in new), key=lambda t: t[0])
        touched: list[Group] = []
        for name, p in named:
            group = self._match(name)
            self._mark_dct(name, p)
            group.params.append(p)
            group.names.append(name)
            self._group_of[p] = group
            if group not in touched:
                touched.append(group)
        for group in touched:
            self._grow_optimizer(group)
        if not self._plates_checked:
            self._plates_checked = True
            self._check_plate_marks(new)

    def _check_plate_marks(self, params: list[torch.Tensor]) -> None:
        """A ``dct: [{plate: NAME}]`` mark that marked nothing on the first step would go
        unnoticed (DCTAdam then acts as Adam): say so, once. (``optim=dct_adam`` on a model
        without a time plate is allowed: DCTAdam is Adam on unmarked parameters.)"""
        plates = [m.plate for m in self.dct_marks if m.plate is not None]
        if plates and not any(getattr(p, "_pyro_dct_dim", None) is not None for p in params):
            names = " or ".join(repr(p) for p in plates)
            warnings.warn(
                f"optim.dct marks by plate, and it marked no parameter: the guide created none "
                f"inside a plate named {names}, so DCTAdam updates every parameter as Adam does. "
                "In your own SVI script, give SVI stack.mark_guide(guide), which marks them; "
                "check that the model has a plate of this name",
                PyrotrainWarning,
                stacklevel=2,
            )

    def _match(self, name: str) -> Group:
        for group in self.groups:
            if any(pat.matches(name) for pat in group.spec.patterns):
                return group
        raise PyrotrainError(
            f"parameter '{name}' matches no group's params patterns",
            key="optim.groups",
            value={g.spec.name: [p.text for p in g.spec.patterns] for g in self.groups},
            hint="Add a pattern for it, or a last catch-all group with params: ['*']",
        )

    def _mark_dct(self, name: str, p: torch.Tensor) -> None:
        for mark in self.dct_marks:
            if mark.dim is not None and any(pat.matches(name) for pat in mark.patterns):
                if -mark.dim > p.dim():
                    raise PyrotrainError(
                        f"parameter '{name}' has shape {tuple(p.shape)}, no dim {mark.dim}",
                        key="optim.dct",
                        value=mark.dim,
                    )
                p._pyro_dct_dim = mark.dim  # type: ignore[attr-defined]  # read by DCTAdam
                return

    def _grow_optimizer(self, group: Group) -> None:
        spec = group.spec
        if spec.frozen:
            return
        if group.optimizer is None:
            cls = OPTIMIZERS.get(spec.optimizer, f"{spec.key}.optimizer.name")
            args = dict(spec.optimizer_args)
            if spec.optimizer in FOREACH_BY_DEFAULT:
                args.setdefault("foreach", True)
            try:
                group.optimizer = call_with_kwargs(
                    cls, args, f"{spec.key}.optimizer", list(group.params)
                )
            except (TypeError, ValueError) as e:
                raise PyrotrainError(
                    f"cannot build optimizer '{spec.optimizer}': {e}",
                    key=f"{spec.key}.optimizer",
                    value=spec.optimizer_args,
                ) from e
            if spec.scheduler is not None:
                length = (
                    self.total_epochs if spec.scheduler.interval == "epoch" else self.total_steps
                )
                group.scheduler = build_scheduler(spec.scheduler, group.optimizer, length)
        else:
            known = group.optimizer.param_groups[0]["params"]
            seen = set(known)
            known.extend(p for p in group.params if p not in seen)
        self._consume_pending_state(group)

    # -- stepping -------------------------------------------------------------------------------

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        """Clip and step each group's optimizer over the parameters in ``params``."""
        params = params if isinstance(params, (set, frozenset)) else set(params)
        self.assign(params)
        for group in self.groups:
            if group.optimizer is None:
                continue
            if len(params) < len(self._group_of):
                # Parameters outside this step's trace must not move, as in pyro.optim, where
                # their per-parameter optimizer is simply not called.
                for p in group.params:
                    if p not in params:
                        p.grad = None
            spec = group.spec
            if spec.clip_norm is not None or spec.clip_value is not None:
                grads = [p for p in group.params if p.grad is not None]
                if spec.clip_value is not None:
                    torch.nn.utils.clip_grad_value_(grads, spec.clip_value)
                if spec.clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(grads, spec.clip_norm)
            group.optimizer.step(*args, **kwargs)

    def step(self, loss: float | None = None) -> None:
        """Advance every ``interval: step`` scheduler; ``loss`` feeds plateau schedulers."""
        self._step_schedulers("step", loss)

    def end_epoch(self, loss: float | None = None) -> None:
        """Advance every ``interval: epoch`` scheduler; ``loss`` feeds plateau schedulers."""
        self._step_schedulers("epoch", loss)

    def _step_schedulers(self, interval: str, loss: float | None) -> None:
        for group in self.groups:
            spec = group.spec.scheduler
            if group.scheduler is not None and spec is not None and spec.interval == interval:
                step_scheduler(group.scheduler, loss)

    # -- reporting ------------------------------------------------------------------------------

    def lrs(self) -> dict[str, float]:
        """Each trained group's current step size (``lr``, or what its optimizer calls it; its
        configured one before it has parameters)."""
        return {g.spec.name: g.rate() for g in self.groups if not g.spec.frozen}

    @torch.no_grad()
    def grad_norms(self, params: Iterable[torch.Tensor]) -> dict[str, float]:
        """The L2 norm of each group's gradients (before clipping), over ``params``."""
        params = params if isinstance(params, (set, frozenset)) else set(params)
        self.assign(params)
        norms = {}
        for group in self.groups:
            grads = [p.grad for p in group.params if p in params and p.grad is not None]
            if grads:
                norms[group.spec.name] = float(
                    torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                )
        return norms

    @torch.no_grad()
    def nonfinite_groups(self, params: Iterable[torch.Tensor]) -> list[str]:
        """The groups with a NaN or infinite gradient among ``params`` (usually none: one fused
        L1 norm over all gradients decides that)."""
        grads = [p.grad for p in params if p.grad is not None and p.grad.numel()]
        # The sum of |g| is NaN or inf when any element is (or, for absurdly large gradients,
        # when it overflows: the exact check below then has the last word).
        if not grads or bool(torch.stack(torch._foreach_norm(grads, 1)).sum().isfinite()):
            return []
        params = params if isinstance(params, (set, frozenset)) else set(params)
        return [
            g.spec.name
            for g in self.groups
            if any(
                p in params and p.grad is not None and not bool(p.grad.isfinite().all())
                for p in g.params
            )
        ]

    def scale_lr(self, names: Iterable[str], factor: float) -> None:
        """Multiply the step size of the named groups by ``factor`` (see
        :meth:`Group.scale_rate`)."""
        wanted = set(names)
        for group in self.groups:
            if group.spec.name in wanted:
                group.scale_rate(factor)

    def apply_changed_args(self, saved_args: Mapping[str, dict]) -> dict[str, dict]:
        """After loading a checkpoint (whose optimizer state carries its own hyperparameters),
        apply the optimizer settings this config changed; a changed lr scales the current rate,
        so a schedule goes on where it was. Returns ``{group: {key: (was, now)}}``."""
        changed: dict[str, dict] = {}
        for group in self.groups:
            old = saved_args.get(group.spec.name)
            if group.optimizer is None or old is None:
                continue
            for key, now in group.spec.optimizer_args.items():
                was = old.get(key)
                if was == now:
                    continue
                changed.setdefault(group.spec.name, {})[key] = (was, now)
                if key == group.spec.rate and isinstance(was, (int, float)) and was > 0:
                    group.scale_rate(now / was)
                else:
                    for pg in group.optimizer.param_groups:
                        pg[key] = now
        return changed

    def unused_groups(self) -> list[GroupSpec]:
        """Non-optional groups that have matched no parameter yet."""
        return [g.spec for g in self.groups if not g.params and not g.spec.optional]

    def layout(self) -> dict[str, dict]:
        """What a checkpoint's state depends on: each group's patterns, optimizer, scheduler."""
        return {
            g.spec.name: {
                "params": [p.text for p in g.spec.patterns],
                "optimizer": "frozen" if g.spec.frozen else g.spec.optimizer,
                "scheduler": g.spec.scheduler.name if g.spec.scheduler else None,
                "dct": [repr(m) for m in self.dct_marks],
            }
            for g in self.groups
        }

    def optimizer_args(self) -> dict[str, dict]:
        return {g.spec.name: dict(g.spec.optimizer_args) for g in self.groups}

    def param_names(self) -> list[str]:
        return [name for g in self.groups for name in g.names]

    def describe(self) -> dict[str, dict]:
        return {
            g.spec.name: {
                "optimizer": "frozen" if g.spec.frozen else g.spec.optimizer,
                "scheduler": g.spec.scheduler.name if g.spec.scheduler else None,
                "params": len(g.params),
                "elements": sum(p.numel() for p in g.params),
            }
            for g in self.groups
        }

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Every group's optimizer and scheduler state, keyed by group, with parameter names."""
        return {
            g.spec.name: {
                "param_names": list(g.names),
                "optimizer": g.optimizer.state_dict() if g.optimizer is not None else None,
                "scheduler": g.scheduler.state_dict() if g.scheduler is not None else None,
            }
            for g in self.groups
        }

    def load_state_dict(self, state: Mapping[str, dict]) -> None:
        """Load state now for groups that have all their parameters, later for the others."""
        unknown = set(state) - {g.spec.name for g in self.groups}
        if unknown:
            raise PyrotrainError(
                "the saved optimizer state has groups this stack does not",
                key="optim.groups",
                value=sorted(unknown),
                choices=[g.spec.name for g in self.groups],
            )
        self._pending_state.update(state)
        for group in self.groups:
            self._consume_pending_state(group)

    def _consume_pending_state(self, group: Group) -> None:
        saved = self._pending_state.get(group.spec.name)
        if saved is None or group.optimizer is None:
            return
        names = saved["param_names"]
        index = {n: i for i, n in enumerate(group.names)}
        if any(n not in index for n in names):
            return  # wait until every saved parameter exists again
        del self._pending_state[group.spec.name]
        # torch optimizers key state by position, so restore the saved order first.
        order = [index[n] for n in names] + [i for n, i in index.items() if n not in set(names)]
        group.params[:] = [group.params[i] for i in order]
        group.names[:] = [group.names[i] for i in order]
        group.optimizer.param_groups[0]["params"][:] = list(group.params)
        if saved["optimizer"] is not None:
            group.optimizer.load_state_dict(saved["optimizer"])
        if saved["scheduler"] is not None and group.scheduler is not None:
            group.scheduler.load_state_dict(saved["scheduler"])

    # PyroOptim's interface, in terms of the above.
    def get_state(self) -> dict:
        return self.state_dict()

    def set_state(self, state_dict: dict) -> None:
        self.load_state_dict(state_dict)
