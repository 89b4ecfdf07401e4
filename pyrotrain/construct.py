"""The model and the guide, built from the config: built-in ones, or a user's own code.

A class is constructed from its ``model.*`` (``guide.*``) settings; it receives the data only where
its constructor names a parameter ``data`` or ``dataset`` (a built-in set's :class:`Dataset`, or a
user's data as the user gave it), and a guide class the model where it names ``model``. A
function, a PyroModule or another callable object is used as it is. An object with ``model`` and
``guide`` methods gives both: its ``model`` trains, and ``guide=model`` takes its ``guide``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch

from .data import Dataset
from .errors import PyrotrainError
from .registry import GUIDES, MODELS, call_with_kwargs
from .schema import Named
from .targets import describe_exception, import_object, where_raised

DATA_PARAMETERS = ("data", "dataset")


def construct(cls: type, kwargs: dict[str, Any], key: str, given: dict[str, Any]) -> Any:
    """``cls(**kwargs)``, plus those of ``given`` (``data``, ``model``) its constructor names."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    extra = {n: v for n, v in given.items() if n in params and n not in kwargs}
    try:
        return call_with_kwargs(cls, {**extra, **kwargs}, key)
    except PyrotrainError:
        raise
    except Exception as e:  # the user's own constructor failed: show where
        raise PyrotrainError(
            f"building the {key} failed: {type(e).__name__}: {e}{where_raised(e)}",
            key=key,
            value=getattr(cls, "__qualname__", repr(cls)),
            hint="HYDRA_FULL_ERROR=1 shows the traceback",
        ) from e


def _data_arguments(data: Dataset) -> dict[str, Any]:
    whole = data.user_object()
    return {name: whole for name in DATA_PARAMETERS}


def build_model(node: Named, data: Dataset) -> tuple[Callable, Any]:
    """The model to train, and the object it came from (whose ``guide`` ``guide=model`` uses)."""
    kwargs = dict(node.kwargs)
    if node.name == "custom":
        target = import_object(kwargs.pop("target"), "model.target")
    else:
        target = MODELS.get(node.name, "model.name")
    if inspect.isclass(target):
        if node.name == "custom":
            obj = construct(target, kwargs, "model", _data_arguments(data))
        else:  # built-in classes take their Dataset first
            obj = construct(target, kwargs, "model", {"data": data})
    elif kwargs:
        raise PyrotrainError(
            "this model is a function, so it takes no model settings", key="model", value=kwargs
        )
    else:
        obj = target
    if _has_pair(obj) and node.name == "custom":
        return obj.model, obj
    if not callable(obj):
        raise PyrotrainError(
            f"model.target names a {type(obj).__name__}, which cannot be called",
            key="model.target",
            value=node.kwargs.get("target"),
            hint="Name a model function, a class (a PyroModule, or one with model and guide "
            "methods), or an object with a model method",
        )
    return obj, obj


def _has_pair(obj: Any) -> bool:
    return callable(getattr(obj, "model", None)) and callable(getattr(obj, "guide", None))


def build_guide(node: Named, model: Callable, owner: Any, data: Dataset) -> Callable:
    kwargs = dict(node.kwargs)
    if node.name == "model":
        guide = getattr(owner, "guide", None)
        if guide is None:
            raise PyrotrainError(
                "this model defines no guide of its own",
                key="guide",
                value=node.name,
                choices=[*GUIDES.names(), "custom"],
            )
        if kwargs:
            raise PyrotrainError("guide=model takes no settings", key="guide", value=kwargs)
        return guide
    if node.name == "custom":
        return _custom_guide(kwargs, model, data)
    factory = GUIDES.get(node.name, "guide.name")
    init = kwargs.get("init_loc_fn")
    if isinstance(init, str):
        path = init if ":" in init else f"pyro.infer.autoguide.initialization:{init}"
        kwargs["init_loc_fn"] = import_object(path, "guide.init_loc_fn")
    return call_with_kwargs(factory, kwargs, "guide", model)


def _custom_guide(kwargs: dict[str, Any], model: Callable, data: Dataset) -> Callable:
    from pyro.infer.autoguide import AutoGuide

    path = kwargs.pop("target")
    target = import_object(path, "guide.target")
    if inspect.isclass(target) and issubclass(target, AutoGuide):
        return call_with_kwargs(target, kwargs, "guide", model)
    if inspect.isclass(target):
        guide = construct(target, kwargs, "guide", {**_data_arguments(data), "model": model})
    elif kwargs:
        raise PyrotrainError(
            "guide.target names a function or an object, so it takes no guide settings",
            key=f"guide.{next(iter(kwargs))}",
            value=kwargs[next(iter(kwargs))],
        )
    else:
        guide = target
    if _has_pair(guide) and not callable(guide):
        guide = guide.guide
    if not callable(guide):
        raise PyrotrainError(
            f"guide.target names a {type(guide).__name__}, which cannot be called",
            key="guide.target",
            value=path,
            hint="Name a guide function, a PyroModule, an autoguide class, or a class whose "
            "instances are called as the model is",
        )
    return guide


def check_sites(model: Callable, guide: Callable, call: Any, key: str) -> None:
    """Refuse a guide whose latent sites are not the model's: a model's latent site without one
    in the guide would be drawn from its prior every step, and a guide's site that the model lacks
    is trained for nothing. Parameters this creates are taken out of the store again and the
    random state put back, so that training starts as it would without the check."""
    from pyro.infer.autoguide import AutoGuide

    if isinstance(guide, AutoGuide):  # built from the model's own sites
        return
    store = pyro.get_param_store()
    before = set(store.keys())
    rng = pyro.util.get_rng_state()
    try:
        with torch.no_grad(), poutine.block():
            guide_trace = call.apply(lambda *a, **k: poutine.trace(guide).get_trace(*a, **k))
            replayed = poutine.replay(model, trace=guide_trace)
            model_trace = call.apply(lambda *a, **k: poutine.trace(replayed).get_trace(*a, **k))
    except PyrotrainError:
        raise
    except Exception as e:
        raise PyrotrainError(
            f"the model and guide failed on the data: {describe_exception(e)}",
            key=key,
            hint="HYDRA_FULL_ERROR=1 shows the traceback",
        ) from e
    finally:
        for name in set(store.keys()) - before:
            del store[name]
        pyro.util.set_rng_state(rng)
    model_latent = _latent(model_trace)
    guide_latent = {
        n for n in _latent(guide_trace) if not guide_trace.nodes[n]["infer"].get("is_auxiliary")
    }
    missing, extra = sorted(model_latent - guide_latent), sorted(guide_latent - model_latent)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"the model's latent sites {missing} have no site in the guide")
        if extra:
            parts.append(f"the guide's sites {extra} are not latent sites of the model")
        raise PyrotrainError(
            "the guide does not match the model: " + "; ".join(parts),
            key=key,
            choices=sorted(model_latent),
            hint="A guide samples each latent site of the model (same names), and no other",
        )


def _latent(trace: Any) -> set[str]:
    # A plate's subsample is a sample site named as the plate.
    plates = {f.name for site in trace.nodes.values() for f in site.get("cond_indep_stack", ())}
    return {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and name not in plates
        and not site["infer"].get("enumerate")
    }
