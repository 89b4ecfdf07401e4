"""Helpers shared by the test modules (fixtures live in conftest.py and use these).

The small models that runs name by import path (``model.target=toy_models:...``) stay in
toy_models.py, which the ``pyrotrain`` subprocesses import from this folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.contrib.forecast.util import MarkDCTParamMessenger
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyrotrain.registry
from pyrotrain.registry import Registry

TESTS = Path(__file__).parent
REPO = TESTS.parent  # first on PYTHONPATH: a worktree's pyrotrain, not the installed checkout's
DATA = TESTS / "data"
SMALL_CSV = DATA / "small_regression.csv"
# The console scripts installed beside this interpreter: pyrotrain, pyrotrain-list, horovodrun...
BIN = Path(sys.executable).parent
PYROTRAIN = BIN / "pyrotrain"


QUICK = ["trainer.progress=none", "trainer.log_every=5"]


def one_group(name: str, **args) -> dict:
    """An optimizer stack config: every parameter in one group ``all`` with optimizer ``name``."""
    return {"groups": {"all": {"params": ["*"], "optimizer": {"name": name, **args}}}}


# -- the command line ----------------------------------------------------------------------------


def cli_env(
    env: Mapping[str, str] | None = None, pythonpath: Sequence[Path] = (REPO, TESTS)
) -> dict[str, str]:
    """The environment to run ``pyrotrain`` in: toy_models importable, and HYDRA_FULL_ERROR only
    where ``env`` sets it, so that a developer's shell cannot turn errors into tracebacks. The
    caller's own PYTHONPATH follows ``pythonpath`` (a checkout run with ``PYTHONPATH=$PWD`` runs
    its own pyrotrain in the subprocesses too, not the installed one)."""
    full = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    full["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in pythonpath), *inherited])
    full.update(env or {})
    return full


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the installed ``pyrotrain`` command as a user would (stdout is not a terminal)."""
    return subprocess.run(
        [str(PYROTRAIN), *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- what a run writes ---------------------------------------------------------------------------


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def saved_params(run_dir: Path) -> dict[str, torch.Tensor]:
    """The unconstrained parameters a run saved in its params.pt."""
    return torch.load(run_dir / "params.pt", weights_only=False)["params"]


def unconstrained_params() -> dict[str, torch.Tensor]:
    """A copy of Pyro's param store as it is now, unconstrained, in the store's order."""
    return {k: p.detach().clone() for k, p in pyro.get_param_store().named_parameters()}


# -- comparisons ---------------------------------------------------------------------------------


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def same(x: Any, y: Any) -> bool:
    """Bitwise equality of nested state, such as checkpoints and optimizer states.

    Tensors and arrays must have the same dtype, shape and bits (so NaN equals the same NaN and
    0.0 differs from -0.0); numbers the same type (1, 1.0 and True all differ) and value (floats
    to the bit); dicts the same keys and lists and tuples the same length, item by item.
    """
    if torch.is_tensor(x) or torch.is_tensor(y):
        return (
            torch.is_tensor(x)
            and torch.is_tensor(y)
            and x.dtype == y.dtype
            and x.shape == y.shape
            and torch.equal(_bits(x), _bits(y))
        )
    if type(x) is not type(y):
        return False
    if isinstance(x, Mapping):
        return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(same(a, b) for a, b in zip(x, y, strict=True))
    if isinstance(x, np.ndarray):
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        return same(x.tolist(), y.tolist()) if x.dtype == object else x.tobytes() == y.tobytes()
    if isinstance(x, float):
        return struct.pack("<d", x) == struct.pack("<d", y)
    return x == y


def assert_same_run(a: Path, b: Path, step: int, ranks: int = 1) -> None:
    """Run dirs ``a`` and ``b`` end with the same parameters, and their checkpoints at ``step``
    with the same optimizer states, RNG states (one per rank: ``ranks``) and loop state, bit for
    bit."""
    from pyrotrain.checkpoint import load_checkpoint

    pa, pb = saved_params(a), saved_params(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name
    ca = load_checkpoint(a / "checkpoints" / f"step-{step:08d}.pt")
    cb = load_checkpoint(b / "checkpoints" / f"step-{step:08d}.pt")
    assert same(ca["optim"], cb["optim"])
    assert len(ca["rng"]) == len(cb["rng"]) == ranks
    assert same(ca["rng"], cb["rng"])
    assert ca["loop"] == cb["loop"]


def assert_close(actual: Any, expected: Any, rtol: float, what: str = "", *, atol=None) -> None:
    """``actual`` equals ``expected`` up to rounding: tensors, or dicts of them with the same keys.

    Without ``atol`` the largest error must be at most ``rtol`` times the largest magnitude in
    ``expected`` (``rtol=0``: equal); with it, each entry as in ``torch.testing.assert_close``,
    ``|a - e| <= atol + rtol * |e|``. Shapes and dtypes must match either way.
    """
    if isinstance(expected, Mapping):
        assert actual.keys() == expected.keys(), what
        for key in expected:
            name = f"{what}.{key}" if what else str(key)
            assert_close(actual[key], expected[key], rtol, name, atol=atol)
        return
    if atol is not None:
        msg = (lambda m: f"{what}: {m}") if what else None
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg)
        return
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, 1e-30)
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= rtol * scale, f"{what}: max abs err {err:.3g} > {rtol:g} * {scale:.3g}"


# -- training in the test process ----------------------------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[torch.dtype]:
    """torch's default dtype set to ``dtype`` inside the block, and put back after it."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield dtype
    finally:
        torch.set_default_dtype(old)


def run_svi(
    model: Callable,
    batches: Iterable[Mapping[str, Any]],
    optim: Any,
    mark_plate: str | None = None,
    after_step: Callable[[], Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Fit an AutoNormal guide with pyro.infer.SVI from a cleared param store and seed 0, one step
    per batch (the model's keyword arguments), calling ``after_step`` after each. The guide's
    params in a plate are DCT-marked by pyrotrain's stack (``mark_guide``) or, for Pyro's own
    optimizers, with ``mark_plate``. Returns the unconstrained params."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model)
    if hasattr(optim, "mark_guide"):  # pyrotrain's stack marks by its own dct: [{plate: ...}]
        guide = optim.mark_guide(guide)
    elif mark_plate:  # Pyro's own way
        guide = MarkDCTParamMessenger(mark_plate)(guide)
    svi = SVI(model, guide, optim, Trace_ELBO())
    for batch in batches:
        svi.step(**batch)
        if after_step is not None:
            after_step()
    return unconstrained_params()


# -- the global registries -----------------------------------------------------------------------


def registries() -> list[Registry]:
    """Every registry in pyrotrain.registry (OPTIMIZERS, SCHEDULERS, MODELS, ...)."""
    return [r for r in vars(pyrotrain.registry).values() if isinstance(r, Registry)]


@contextlib.contextmanager
def registries_restored() -> Iterator[None]:
    """Every registry's entries as they were before the block, whatever it registered, replaced
    or removed. The dicts are restored in place: the registries keep their identity."""
    saved = {
        registry: (dict(registry._entries), dict(registry._facts)) for registry in registries()
    }
    try:
        yield
    finally:
        for registry, (entries, facts) in saved.items():
            registry._entries.clear()
            registry._entries.update(entries)
            registry._facts.clear()
            registry._facts.update(facts)
