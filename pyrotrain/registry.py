"""Name -> constructor registries for everything the config can name.

Entries may be objects or lazy import strings (``"package.module:Name"``) so that listing the
registry or starting the CLI imports nothing heavy. Any key that takes a registered name also takes
an import path, so user code plugs in without registering: ``optimizer.name=mypkg.optim:MyAdam``.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .errors import PyrotrainError
from .targets import import_object


def looks_like_import_path(name: str) -> bool:
    return ":" in name or "." in name


class Registry:
    """An ordered mapping of names to constructors, with lazy import strings allowed."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._facts: dict[str, dict[str, Any]] = {}

    def register(self, name: str, obj: Any = None, **facts: Any) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator. ``facts`` are
        what the rest of pyrotrain may ask about the entry without importing it (an optimizer's
        ``rate_key``)."""
        if obj is None:
            return lambda o: self.register(name, o, **facts)
        self._entries[name] = obj
        self._facts[name] = facts
        return obj

    def fact(self, name: str, fact: str, default: Any = None) -> Any:
        return self._facts.get(name, {}).get(fact, default)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: Any, key: str | None = None) -> Any:
        """Resolve a registered name or an import path; unknown names raise PyrotrainError."""
        if not isinstance(name, str) or not name:
            raise PyrotrainError(
                f"expected the name of a registered {self.kind}",
                key=key,
                value=name,
                choices=self.names(),
            )
        if name in self._entries:
            obj = self._entries[name]
            if isinstance(obj, str):
                obj = self._entries[name] = import_object(obj, key)
            return obj
        if looks_like_import_path(name):
            return import_object(name, key)
        raise PyrotrainError(
            f"unknown {self.kind}",
            key=key,
            value=name,
            choices=self.names(),
            hint="Or give an import path 'package.module:Name'",
        )

    def describe(self, name: str) -> str:
        """The first line of the entry's docstring, without importing lazy entries' modules."""
        obj = self._entries[name]
        if isinstance(obj, str):
            return obj
        doc = inspect.getdoc(obj) or ""
        return doc.splitlines()[0] if doc else ""


def rate_key(optimizer: str, key: str | None = None) -> str | None:
    """The name of an optimizer's step-size argument, declared once per optimizer: the registry's
    ``rate_key`` fact, else the class's ``rate_key`` attribute, else ``lr`` when its constructor
    takes one; None for an optimizer without a step size (nothing to scale or schedule)."""
    declared = OPTIMIZERS.fact(optimizer, "rate_key")
    if declared is not None:
        return declared
    cls = OPTIMIZERS.get(optimizer, key)
    declared = getattr(cls, "rate_key", None)
    if isinstance(declared, str):
        return declared
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return None
    return "lr" if "lr" in params else None


def rate_default(optimizer: str, rate: str, key: str | None = None) -> float | None:
    """The default of an optimizer's step size, from its constructor's signature."""
    try:
        param = inspect.signature(OPTIMIZERS.get(optimizer, key)).parameters.get(rate)
    except (TypeError, ValueError):
        return None
    default = getattr(param, "default", None)
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return None
    return float(default)


def call_with_kwargs(fn: Callable, kwargs: Mapping[str, Any], key: str, *args: Any) -> Any:
    """Call ``fn(*args, **kwargs)``, turning unknown or missing arguments into a PyrotrainError."""
    check_kwargs(fn, kwargs, key, n_positional=len(args))
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        what = getattr(fn, "__qualname__", repr(fn))
        missing = re.search(r"missing a required argument: '(\w+)'", str(e))
        name = missing.group(1) if missing else "NAME"
        raise PyrotrainError(
            f"{what} cannot be called with these settings: {e}",
            key=key,
            value=dict(kwargs),
            hint=f"Set it on the command line, e.g. +{key}.{name}=VALUE",
        ) from e
    except ValueError:  # no signature to check against (a builtin)
        pass
    return fn(*args, **kwargs)


def _annotations(fn: Callable) -> dict[str, Any]:
    """Each parameter's annotation as a type, where it can be evaluated (one unresolvable
    annotation does not hide the others, as it does for ``typing.get_type_hints``)."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:
        pass
    namespace = {**vars(typing), **getattr(inspect.getmodule(target), "__dict__", {})}
    out = {}
    for name, ann in getattr(target, "__annotations__", {}).items():
        try:
            out[name] = eval(ann, namespace) if isinstance(ann, str) else ann  # noqa: S307
        except Exception:
            continue
    return out


def _checkable(tp: Any) -> bool:
    """Whether :func:`pyrotrain.schema.coerce` understands every part of a type."""
    if tp in (int, float, bool, str, type(None)):
        return True
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType, list):
        return all(_checkable(a) for a in typing.get_args(tp))
    return False


def check_typed_kwargs(fn: Callable, kwargs: Mapping[str, Any], key: str) -> None:
    """Check ``kwargs`` against the simple types ``fn`` annotates its parameters with (a
    scheduler's ``gamma: float``), so that a wrong type is refused before it is first used."""
    from .schema import coerce

    hints = _annotations(fn)
    for name, value in kwargs.items():
        tp = hints.get(name)
        if tp is not None and _checkable(tp):
            coerce(value, tp, f"{key}.{name}")


def check_kwargs(fn: Callable, kwargs: Mapping[str, Any], key: str, n_positional: int = 0) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = [
        p.name for p in params[n_positional:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    for name in kwargs:
        if name not in accepted:
            what = getattr(fn, "__qualname__", repr(fn))
            raise PyrotrainError(
                f"{what} takes no argument '{name}'",
                key=f"{key}.{name}",
                value=kwargs[name],
                choices=accepted,
            )


OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")
MODELS = Registry("model")
DATASETS = Registry("dataset")
GUIDES = Registry("guide")
ELBOS = Registry("ELBO")

register_optimizer = OPTIMIZERS.register
register_scheduler = SCHEDULERS.register
register_model = MODELS.register
register_dataset = DATASETS.register
register_guide = GUIDES.register
register_elbo = ELBOS.register


# torch.optim optimizers whose foreach implementation gives bitwise the same steps as their
# per-tensor loop (checked in tests/test_stack.py). On the CPU torch picks the loop, which costs
# ~35 us per tensor on this project's 2-core machine; a group of hundreds of small parameters
# steps about twice as fast with foreach. A group's own ``foreach:`` setting wins.
FOREACH_BY_DEFAULT = frozenset(
    ["torch_adam", "torch_adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "rprop"]
)


def _register_builtins() -> None:
    # Pyro's optimizers with Pyro's math, updating a whole group per call (pyrotrain.optim);
    # the pyro_* names keep Pyro's per-parameter originals for comparison.
    # sparse: the row-sparse class a group with sparse: true uses (pyrotrain.optim.rows)
    OPTIMIZERS.register(
        "adagrad_rmsprop",
        "pyrotrain.optim.adagrad_rmsprop:AdagradRMSProp",
        sparse="pyrotrain.optim.sparse_adagrad_rmsprop:SparseAdagradRMSProp",
    )
    OPTIMIZERS.register("dct_adam", "pyrotrain.optim.dct_adam:DCTAdam")
    OPTIMIZERS.register(
        "clipped_adam",
        "pyrotrain.optim.clipped_adam:ClippedAdam",
        sparse="pyrotrain.optim.lazy_adam:LazyClippedAdam",
    )
    # Pyro's class cannot carry a rate_key attribute, so its entry declares it.
    OPTIMIZERS.register(
        "pyro_adagrad_rmsprop", "pyro.optim.adagrad_rmsprop:AdagradRMSProp", rate_key="eta"
    )
    OPTIMIZERS.register("pyro_dct_adam", "pyro.optim.dct_adam:DCTAdam")
    OPTIMIZERS.register("pyro_clipped_adam", "pyro.optim.clipped_adam:ClippedAdam")
    # torch's Adam and AdamW with torch's math, updating a whole group per call (pyrotrain.optim);
    # torch_adam and torch_adamw are torch's classes (fused, capturable, differentiable).
    OPTIMIZERS.register(
        "adam", "pyrotrain.optim.adam:Adam", sparse="pyrotrain.optim.lazy_adam:LazyAdam"
    )
    OPTIMIZERS.register("adamw", "pyrotrain.optim.adam:AdamW")
    # torch.optim optimizers that need no closure and take dense gradients (what SVI produces).
    for name, cls in [
        ("torch_adam", "Adam"),
        ("torch_adamw", "AdamW"),
        ("sgd", "SGD"),
        ("rmsprop", "RMSprop"),
        ("adagrad", "Adagrad"),
        ("adadelta", "Adadelta"),
        ("adamax", "Adamax"),
        ("nadam", "NAdam"),
        ("radam", "RAdam"),
        ("asgd", "ASGD"),
        ("rprop", "Rprop"),
    ]:
        OPTIMIZERS.register(name, f"torch.optim:{cls}")

    for name, cls in [
        ("step", "StepLR"),
        ("multistep", "MultiStepLR"),
        ("exponential", "ExponentialLR"),
        ("cosine", "CosineAnnealingLR"),
        ("cosine_warm_restarts", "CosineAnnealingWarmRestarts"),
        ("onecycle", "OneCycleLR"),
        ("cyclic", "CyclicLR"),
        ("plateau", "ReduceLROnPlateau"),
        ("lambda", "LambdaLR"),
        ("multiplicative", "MultiplicativeLR"),
        ("linear", "LinearLR"),
        ("constant", "ConstantLR"),
        ("polynomial", "PolynomialLR"),
    ]:
        SCHEDULERS.register(name, f"torch.optim.lr_scheduler:{cls}")

    for name, cls in [
        ("auto_normal", "AutoNormal"),
        ("auto_delta", "AutoDelta"),
        ("auto_diagonal_normal", "AutoDiagonalNormal"),
        ("auto_lowrank_mvn", "AutoLowRankMultivariateNormal"),
        ("auto_mvn", "AutoMultivariateNormal"),
        ("auto_laplace", "AutoLaplaceApproximation"),
    ]:
        GUIDES.register(name, f"pyro.infer.autoguide:{cls}")

    for name, cls in [
        ("trace", "Trace_ELBO"),
        ("trace_meanfield", "TraceMeanField_ELBO"),
        ("tracegraph", "TraceGraph_ELBO"),
        ("jit_trace", "JitTrace_ELBO"),
        ("jit_trace_meanfield", "JitTraceMeanField_ELBO"),
        ("renyi", "RenyiELBO"),
    ]:
        ELBOS.register(name, f"pyro.infer:{cls}")

    for name, target in [
        ("regression", "regression:Regression"),
        ("timeseries", "timeseries:TimeSeries"),
        ("sparse", "sparse:SparseRatings"),
        ("neural", "neural:DigitsVAE"),
        ("hierarchical", "hierarchical:Hierarchical"),
    ]:
        MODELS.register(name, f"pyrotrain.models.{target}")
    for name, target in [
        ("diabetes", "pyrotrain.data.builtin:load_diabetes"),
        ("synthetic_regression", "pyrotrain.data.builtin:make_regression"),
        ("csv", "pyrotrain.data.tables:load_csv"),
        ("python", "pyrotrain.data.python:load_python"),
        ("co2", "pyrotrain.models.timeseries:load_co2"),
        ("ratings", "pyrotrain.models.sparse:make_ratings"),
        ("digits", "pyrotrain.models.neural:load_digits"),
        ("grouped", "pyrotrain.models.hierarchical:make_grouped"),
    ]:
        DATASETS.register(name, target)


_register_builtins()
