"""How the model and guide are called with a step's rows: as the user's own SVI loop calls them.

A built-in data set's tensors go by keyword, with ``index`` and ``size``, each only where the
model's signature accepts it. A user's data (``data=python``) goes as the user gave it: a tuple's
values by position, a dict's by keyword (by position where the model's and guide's signatures
list those names first, in that order: ``JitTrace_ELBO`` keys its cache on the positional count
and on keyword values by id). Nothing is renamed, and ``index``/``size`` are added only on part of
the rows (minibatches, or a rank's shard) and only where both signatures name them.

A model that takes the rows whole (no ``size``) sees a plate over the rows it is given; on part of
the rows each site inside a plate of exactly that many rows is scaled by all rows / those rows,
so a step estimates the whole data's ELBO as one process on all rows computes it.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.poutine.messenger import Messenger

from .data import CallSpec, Dataset
from .errors import PyrotrainError


@dataclass
class Call:
    """One step's arguments; ``apply`` runs ``fn(*before, *args, **kwargs)`` with the rows'
    scaling in effect."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    rows: int = 0
    scale: float = 1.0
    names: list[str] = field(default_factory=list)

    def apply(self, fn: Callable, *before: Any) -> Any:
        with self.scaled():
            return fn(*before, *self.args, **self.kwargs)

    @contextlib.contextmanager
    def scaled(self) -> Iterator[None]:
        if self.scale == 1.0:
            yield
            return
        with RowScale(self.rows, self.scale):
            yield

    def shapes(self) -> dict[str, Any]:
        values = [*self.args, *self.kwargs.values()]
        return {
            n: tuple(v.shape)
            for n, v in zip(self.names, values, strict=False)
            if torch.is_tensor(v)
        }


class RowScale(Messenger):
    """Scale each sample site inside a plate of ``rows`` elements by ``factor`` (once)."""

    def __init__(self, rows: int, factor: float):
        super().__init__()
        self.rows, self.factor = rows, factor

    def _pyro_sample(self, msg: dict) -> None:
        if any(f.full_size == self.rows for f in msg["cond_indep_stack"]):
            msg["scale"] = msg["scale"] * self.factor


def parameters(fn: Any) -> list[inspect.Parameter] | None:
    """``fn``'s parameters, or None when it takes any arguments (``*args, **kwargs``: an
    autoguide) or has no signature to read."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    kinds = {p.kind for p in params}
    if inspect.Parameter.VAR_POSITIONAL in kinds and inspect.Parameter.VAR_KEYWORD in kinds:
        return None
    return params


def accepted_kwargs(fn: Callable) -> frozenset[str] | None:
    """The keyword names ``fn`` accepts; None: any (``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _names(params: list[inspect.Parameter] | None, name: str) -> bool:
    """Whether a signature names ``name`` (None: takes anything, so it can be given)."""
    if params is None:
        return True
    return any(p.name == name and p.kind is not p.POSITIONAL_ONLY for p in params)


def _positional_prefix(params: list[inspect.Parameter] | None, keyword: tuple[str, ...]) -> list:
    """The keyword names a signature lists first, in its order, as positional parameters."""
    if params is None:
        return list(keyword)
    out = []
    for p in params:
        if p.kind is not p.POSITIONAL_OR_KEYWORD or p.name not in keyword:
            break
        out.append(p.name)
    return out


class Binding:
    """Turns a step's row indices into the model's and guide's arguments (a :class:`Call`)."""

    def __init__(
        self, data: Dataset, model: Callable, guide: Callable, whole: bool, key: str = "model"
    ):
        self.data = data
        self.whole = whole  # every step sees every row in order: pass the tensors as they are
        self.model_kwargs = accepted_kwargs(model)
        self.spec: CallSpec | None = data.call
        self.extras: tuple[str, ...] = ()
        self.scales = False
        if self.spec is None:
            return
        model_params, guide_params = parameters(model), parameters(guide)
        first = _positional_prefix(model_params, self.spec.keyword)
        theirs = _positional_prefix(guide_params, self.spec.keyword)
        common = []
        for n, m in zip(first, theirs, strict=False):
            if n != m:
                break
            common.append(n)
        if self.spec.positional == ():  # a dict: positional where both list its names first
            self.spec = self.spec.with_positional(tuple(common))
        if not whole:
            self.extras = tuple(
                n
                for n in ("index", "size")
                if model_params is not None
                and _names(model_params, n)
                and _names(guide_params, n)
                and n not in self.spec.keyword
                and n not in self.spec.positional
            )
            self.scales = "size" not in self.extras
        check_call(model, self.sample(), key, "model")
        if guide is not model:
            check_call(guide, self.sample(), "guide", "guide")

    def sample(self) -> Call:
        return self(torch.arange(min(self.data.size, 2)))

    def __call__(self, index: torch.Tensor) -> Call:
        data = self.data
        if self.spec is None:  # a built-in set: its tensors by name, as the model accepts them
            index = index.to(_device(data))
            batch: dict[str, Any] = {k: v[index] for k, v in data.train.items()}
            batch["index"] = index
            batch["size"] = data.size
            if self.model_kwargs is not None:
                batch = {k: v for k, v in batch.items() if k in self.model_kwargs}
            return Call((), batch, names=list(batch))
        spec = self.spec
        if self.whole:
            rows = dict(data.train)
        else:
            index = index.to(_device(data))
            rows = {k: v[index] for k, v in data.train.items()}
        value = {**spec.fixed, **rows}
        args = tuple(value[n] for n in spec.positional)
        kwargs = {n: value[n] for n in spec.keyword}
        if "index" in self.extras:
            kwargs["index"] = index
        if "size" in self.extras:
            kwargs["size"] = data.size
        n = len(index)
        scale = data.size / n if self.scales and not self.whole and n < data.size else 1.0
        names = [*spec.positional, *kwargs]
        return Call(args, kwargs, rows=n, scale=scale, names=names)


def _device(data: Dataset) -> torch.device:
    for v in data.train.values():
        return v.device
    return torch.device("cpu")


def check_call(fn: Callable, call: Call, key: str, what: str) -> None:
    """Refuse a model or guide whose signature cannot take the data's arguments."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*call.args, **call.kwargs)
    except TypeError as e:
        given = [
            f"{n} {_shape(v)}"
            for n, v in zip(call.names, [*call.args, *call.kwargs.values()], strict=True)
        ]
        raise PyrotrainError(
            f"the {what} {getattr(fn, '__qualname__', fn)}{sig} cannot be called with the data "
            f"({e}): it would be called with {', '.join(given) or 'no arguments'}",
            key=key,
            hint="The data's tuple values go by position, a dict's by keyword (its names must be "
            "the signature's); index and size are passed only where the signature names them",
        ) from e


def _shape(v: Any) -> str:
    if torch.is_tensor(v):
        return f"(tensor {tuple(v.shape)})"
    return f"({type(v).__name__})"
