"""The one validation path: a config section is a frozen dataclass, checked by :func:`parse`.

Each field's type says what is accepted, its metadata (:func:`setting`) the help text and bounds,
and a section's optional ``check(key)`` method the rules that span fields or need a registry. Every
error is a :class:`~pyrotrain.errors.PyrotrainError` that names the key, the value and, where there
is a finite set, the choices, so ``trainer.steps=abc`` and ``optim.groups.a.clip.norm=-1`` read
alike.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from .errors import PyrotrainError


def setting(
    help: str,
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    minimum: float | None = None,
    exclusive: bool = False,
    below: float | None = None,
    maximum: float | None = None,
    one_or_list: bool = False,
) -> Any:
    """A dataclass field with its help text and bounds: ``minimum`` (``exclusive``: strictly
    above it), ``below`` (strictly), ``maximum`` (inclusive). ``one_or_list``: a single value
    stands for a list of one."""
    meta = {
        "help": help,
        "minimum": minimum,
        "exclusive": exclusive,
        "below": below,
        "maximum": maximum,
        "one_or_list": one_or_list,
    }
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Named:
    """A section that names a thing and passes the rest to it: ``{name: X, **kwargs}`` (or just
    ``X``): a model, a dataset, a guide, an ELBO, an optimizer, a scheduler."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def to_plain(node: Any, key: str) -> Any:
    """Resolve a config node to plain Python, naming the key of any value left as ``???``."""
    if not isinstance(node, (DictConfig, ListConfig)):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        # OmegaConf names the key from the config's root, whichever node was resolved
        full_key = str(e.full_key) if getattr(e, "full_key", None) else key
        raise PyrotrainError(
            "this setting is required and has no value",
            key=full_key,
            hint=f"Set it on the command line, e.g. {full_key}=...",
        ) from e


def parse(cls: type, node: Any, key: str) -> Any:
    """Check a config node against dataclass ``cls`` and build it; unknown keys and bad values
    raise. Nested dataclasses, lists, mappings and :class:`Named` sections are parsed the same way.

    A section may declare ``SECTION`` (what its messages call it; default: its key) and
    ``MOVED = {old key: new key}`` for keys that now live elsewhere.
    """
    node = to_plain(node, key)
    if node is None:
        node = {}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if not isinstance(node, dict):
        raise PyrotrainError(
            "must be a mapping of settings", key=key, value=node, choices=list(fields)
        )
    moved = getattr(cls, "MOVED", {})
    section = getattr(cls, "SECTION", key)
    for name in node:
        if name in moved:
            raise PyrotrainError(
                f"'{name}' is no longer a {section} setting: it is now {moved[name]}",
                key=f"{key}.{name}",
                value=node[name],
                hint=f"Set {moved[name]}={node[name]} instead",
            )
        if name not in fields:
            raise PyrotrainError(
                f"'{name}' is not a {section} setting",
                key=f"{key}.{name}",
                value=node[name],
                choices=list(fields),
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name in node:
            values[name] = coerce(node[name], hints[name], f"{key}.{name}", dict(f.metadata))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise PyrotrainError(
                f"this setting is required ({f.metadata.get('help', name)})",
                key=f"{key}.{name}",
                hint=f"Set it, e.g. {key}.{name}=...",
            )
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        check(key)
    return obj


def parse_named(node: Any, key: str) -> Named:
    """``X`` or ``{name: X, ...}`` as a :class:`Named`."""
    node = to_plain(node, key)
    if isinstance(node, str) and node:
        return Named(node)
    if not isinstance(node, dict) or not isinstance(node.get("name"), str) or not node["name"]:
        raise PyrotrainError("must be a mapping with a 'name' key", key=key, value=node)
    kwargs = dict(node)
    return Named(kwargs.pop("name"), kwargs)


def describe_type(tp: Any) -> str:
    """The accepted values of a field type, in words (for messages and the settings tables)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(describe_type(a) for a in args) + " (or null)"
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if tp is Named:
        return "a name, or a mapping with a 'name'"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def coerce(value: Any, tp: Any, key: str, meta: dict | None = None) -> Any:
    """``value`` checked against type ``tp`` and the bounds in ``meta``."""
    meta = meta or {}
    help_text = f" ({meta['help']})" if meta.get("help") else ""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise PyrotrainError(
                f"not a valid choice{help_text}", key=key, value=value, choices=args
            )
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return coerce(value, inner[0], key, meta)
        for a in inner:  # the first that takes the value
            try:
                return coerce(value, a, key, meta)
            except PyrotrainError:
                continue
        raise PyrotrainError(f"must be {describe_type(tp)}{help_text}", key=key, value=value)
    if dataclasses.is_dataclass(tp) and tp is not Named:
        return parse(cast(type, tp), value, key)
    if tp is Named:
        return parse_named(value, key)
    if origin is list:
        if meta.get("one_or_list") and not isinstance(value, (list, tuple)):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise PyrotrainError(f"must be a non-empty list{help_text}", key=key, value=value)
        (item,) = args
        return [coerce(v, item, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise PyrotrainError(f"must be a mapping{help_text}", key=key, value=value)
        _, item = args
        return {str(k): coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    ok = (
        (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is bool and isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise PyrotrainError(f"must be {describe_type(tp)}{help_text}", key=key, value=value)
    if tp is float:
        value = float(value)
    minimum, below, maximum = meta.get("minimum"), meta.get("below"), meta.get("maximum")
    if minimum is not None and (value <= minimum if meta.get("exclusive") else value < minimum):
        bound = f"greater than {minimum}" if meta.get("exclusive") else f"at least {minimum}"
        raise PyrotrainError(f"must be {bound}{help_text}", key=key, value=value)
    if below is not None and not value < below:
        raise PyrotrainError(f"must be less than {below}{help_text}", key=key, value=value)
    if maximum is not None and value > maximum:
        raise PyrotrainError(f"must be at most {maximum}{help_text}", key=key, value=value)
    return value


def _yaml(value: Any) -> str:
    """``value`` as YAML writes it in a config file."""
    return OmegaConf.to_yaml({"v": value}).strip()[len("v: ") :]


def settings_table(cls: type) -> str:
    """A markdown table of a section's settings: key, default, what it accepts and does."""
    hints = typing.get_type_hints(cls)
    lines = ["| key | default | accepts | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default
        if dataclasses.is_dataclass(default):  # a nested section: its own table says more
            shown = "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in vars(default).items()) + "}"
            accepts = "a mapping of " + ", ".join(vars(default))
        else:
            shown = _yaml(default)
            accepts = describe_type(hints[f.name])
        bounds = []
        m = f.metadata
        if m.get("minimum") is not None:
            bounds.append(f"{'>' if m.get('exclusive') else '>='} {m['minimum']}")
        if m.get("below") is not None:
            bounds.append(f"< {m['below']}")
        if m.get("maximum") is not None:
            bounds.append(f"<= {m['maximum']}")
        if bounds:
            accepts += ", " + " and ".join(bounds)
        lines.append(f"| `{f.name}` | `{shown}` | {accepts} | {m.get('help', '')} |")
    return "\n".join(lines)
