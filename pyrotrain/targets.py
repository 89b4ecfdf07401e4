"""User code by name: ``package.module:NAME`` or ``path/to/file.py:NAME``, one loader for all.

A model, a guide, a data function, an optimizer or a scheduler given by the user comes through
:func:`import_object`. A file is imported once per run of the interpreter (a second target in the
same file gets the same module), under its own name when no other module has it, with its
directory on ``sys.path`` so that its own ``import helpers`` finds the file next to it. Its
``if __name__ == "__main__":`` block does not run: the module's ``__name__`` is never
``"__main__"``. Relative paths are read from the directory the command was started in.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

from .errors import PyrotrainError

_IMPORTED: dict[Path, types.ModuleType] = {}
_FILE_TARGET = re.compile(r"^(?P<file>.+\.py):(?P<attr>[\w.]+)$")


def start_directory() -> Path:
    """Where the command was started: the current directory, or Hydra's original one inside a
    Hydra job that changed directory (``hydra.job.chdir=true``). Only the ``chdir`` setting of
    the job says so: the HydraConfig singleton outlives the job it was set for (an in-process
    run after a CLI job in the same interpreter), so being initialised proves nothing."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized() and HydraConfig.get().job.chdir:
            from hydra.utils import get_original_cwd

            return Path(get_original_cwd())
    except (ImportError, ValueError):
        pass
    return Path.cwd()


def is_file_target(path: str) -> bool:
    return _FILE_TARGET.match(path) is not None


def import_object(path: str, key: str | None = None) -> Any:
    """Import ``package.module:Name``, ``package.module.Name`` or ``path/to/file.py:Name``."""
    if not isinstance(path, str):
        raise PyrotrainError(
            "expected an import path such as 'package.module:Name' or 'file.py:Name'",
            key=key,
            value=path,
        )
    found = _FILE_TARGET.match(path)
    if found:
        module = _import_file(found["file"], path, key)
        return _attribute(module, found["attr"], found["file"], path, key)
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise PyrotrainError(
            "expected an import path such as 'package.module:Name' or 'file.py:Name'",
            key=key,
            value=path,
        )
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise PyrotrainError(
            f"cannot import module '{module_name}' ({e})",
            key=key,
            value=path,
            hint="Check that it is installed or on PYTHONPATH (the working directory is "
            "included), or name the file: path/to/file.py:NAME",
        ) from e
    except SyntaxError as e:
        raise _syntax_error(module_name, e, key, path) from e
    except Exception as e:  # the user's module failed while it was imported
        raise _import_failed(module_name, e, key, path) from e
    return _attribute(obj, attr, f"module '{module_name}'", path, key)


def _attribute(module: Any, attr: str, where: str, path: str, key: str | None) -> Any:
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise PyrotrainError(
                f"{where} has no attribute '{attr}'",
                key=key,
                value=path,
                choices=_public_names(module) if obj is module else None,
            ) from e
    return obj


def _public_names(module: Any) -> list[str]:
    """The module's own classes and functions (what a target could name)."""
    if not isinstance(module, types.ModuleType):
        return []
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and callable(value)
        and getattr(value, "__module__", None) == module.__name__
    )


def _import_file(file: str, path: str, key: str | None) -> types.ModuleType:
    p = Path(file).expanduser()
    if not p.is_absolute():
        p = start_directory() / p
    p = p.resolve()
    if not p.is_file():
        raise PyrotrainError(
            f"there is no Python file {p}",
            key=key,
            value=path,
            hint=f"Relative paths are read from where the command started, {start_directory()}",
        )
    if p in _IMPORTED:
        return _IMPORTED[p]
    name = p.stem
    if _file_of(sys.modules.get(name)) == p:  # the user's own code imported it first
        return sys.modules[name]
    if name in sys.modules or not name.isidentifier():
        # Another module has the file's name: this one gets a name no import can clash with.
        digest = hashlib.sha1(str(p).encode()).hexdigest()[:10]
        stem = re.sub(r"\W", "_", p.stem)
        name = f"_pyrotrain_user_{stem}_{digest}"
    folder = str(p.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, p)
    assert spec is not None and spec.loader is not None  # a .py file always has a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[name]
        raise _syntax_error(str(p), e, key, path) from e
    except Exception as e:
        del sys.modules[name]
        raise _import_failed(str(p), e, key, path) from e
    _IMPORTED[p] = module
    return module


def _file_of(module: Any) -> Path | None:
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return None
    try:
        return Path(file).resolve()
    except OSError:
        return None


def _syntax_error(what: str, e: SyntaxError, key: str | None, path: str) -> PyrotrainError:
    return PyrotrainError(
        f"{what} has a syntax error: {e.msg} ({e.filename}, line {e.lineno})",
        key=key,
        value=path,
    )


def _import_failed(what: str, e: Exception, key: str | None, path: str) -> PyrotrainError:
    return PyrotrainError(
        f"importing {what} failed: {type(e).__name__}: {e}{where_raised(e)}",
        key=key,
        value=path,
    )


def describe_exception(exc: BaseException) -> str:
    """``Type: message (FILE, line N)`` for an error in user code, without the table of sample
    sites that Pyro appends to errors raised inside a model."""
    words = re.split(r"\n\s*Trace Shapes:", str(exc))[0].strip()
    return f"{type(exc).__name__}: {words}{where_raised(exc)}"


def where_raised(exc: BaseException) -> str:
    """`` (FILE, line N)`` of the innermost frame of ``exc``'s traceback in the user's own code
    (not in an installed library, the standard library or pyrotrain); else the innermost."""
    import sysconfig
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    ours = str(Path(__file__).resolve().parent)
    libraries = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    own = [
        f
        for f in frames
        if not any(f.filename.startswith(p) for p in (*libraries, ours))
        and not f.filename.startswith("<")
    ]
    frame = (own or frames)[-1]
    return f" ({frame.filename}, line {frame.lineno})"
