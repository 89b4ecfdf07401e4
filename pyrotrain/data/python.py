"""``data=python``: a user's own data, from a Python function or object, or from a file.

    pyrotrain data=python data.target=counts.py:make_counts +data.docs=500
    pyrotrain data=python data.path=counts.npz

The data is a tensor (one positional argument), a tuple or list (positional arguments) or a dict
(keyword arguments) whose values are tensors, numpy arrays or plain numbers. The model and guide
are called with exactly those arguments. The rows are the first dimension of the first tensor:
every tensor with that many rows along its first dimension is sliced when minibatches or ranks
take part of the rows; any other value is passed as it is.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import numpy as np
import torch

from ..errors import PyrotrainError
from ..targets import import_object
from .dataset import CallSpec, Dataset
from .files import read_file

ACCEPTED = "a tensor, a tuple or list (positional arguments) or a dict (keyword arguments) of "
ACCEPTED += "tensors, numpy arrays or plain numbers"


def load_python(target: str | None = None, path: str | None = None, **settings: Any) -> Dataset:
    """A user's data: ``target`` (a function, called with ``settings``, or an object) or ``path``
    (a file: see :mod:`pyrotrain.data.files`)."""
    if (target is None) == (path is None):
        raise PyrotrainError(
            "data=python needs either data.target=module:NAME (or file.py:NAME) or data.path=FILE",
            key="data",
            value={"target": target, "path": path},
        )
    if path is not None:
        if settings:
            raise PyrotrainError(
                "a data file takes no settings", key=f"data.{next(iter(settings))}", value=settings
            )
        return from_object(read_file(path), str(path), "data.path")
    assert target is not None
    obj = import_object(target, "data.target")
    if callable(obj) and not torch.is_tensor(obj):
        from ..registry import call_with_kwargs

        try:
            obj = call_with_kwargs(obj, settings, "data")
        except PyrotrainError:
            raise
        except Exception as e:
            from ..targets import describe_exception

            raise PyrotrainError(
                f"the data function failed: {describe_exception(e)}",
                key="data.target",
                value=target,
                hint="HYDRA_FULL_ERROR=1 shows the traceback",
            ) from e
    elif settings:
        raise PyrotrainError(
            f"data.target names a {type(obj).__name__}, not a function, so it takes no settings",
            key=f"data.{next(iter(settings))}",
            value=settings[next(iter(settings))],
        )
    return from_object(obj, target, "data.target")


def from_object(obj: Any, source: str, key: str) -> Dataset:
    """The Dataset of a user's data object, and how it is passed (its :class:`CallSpec`)."""
    if torch.is_tensor(obj) or isinstance(obj, np.ndarray):
        form, items = "tensor", {"data": obj}
    elif isinstance(obj, (tuple, list)):
        form = "tuple" if isinstance(obj, tuple) else "list"
        items = {f"args[{i}]": v for i, v in enumerate(obj)}
    elif isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        form, items = "dict", dict(obj)
    else:
        raise PyrotrainError(
            f"the data is a {_kind(obj)}; accepted: {ACCEPTED}", key=key, value=source
        )
    values = {name: _value(v, name, source, key) for name, v in items.items()}
    tensors = [v for v in values.values() if torch.is_tensor(v) and v.dim() >= 1]
    rows = tensors[0].shape[0] if tensors else None
    train = {n: v for n, v in values.items() if _is_rows(v, rows)}
    fixed = {n: v for n, v in values.items() if n not in train}
    names = tuple(values)
    positional, keyword = (names, ()) if form != "dict" else ((), names)
    info = {"source": source, "rows": rows or 1, "row_values": list(train), "form": form}
    return Dataset(train, {}, info, CallSpec(positional, keyword, fixed, form))


def _is_rows(v: Any, rows: int | None) -> bool:
    return rows is not None and torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == rows


def _value(v: Any, name: str, source: str, key: str) -> Any:
    if torch.is_tensor(v) or v is None:
        return v
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "biuf":
            raise PyrotrainError(
                f"'{name}' of the data is a numpy array of {v.dtype}, not numbers",
                key=key,
                value=source,
                hint=f"Accepted: {ACCEPTED}",
            )
        return torch.as_tensor(np.require(v, requirements="W"))  # torch wants a writable array
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, numbers.Number):
        return v
    raise PyrotrainError(
        f"'{name}' of the data is a {_kind(v)}; accepted: {ACCEPTED}", key=key, value=source
    )


def _kind(obj: Any) -> str:
    if inspect.ismodule(obj):
        return "module"
    return type(obj).__name__
