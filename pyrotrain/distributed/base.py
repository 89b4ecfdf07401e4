"""What the training loop asks of a distributed engine (:class:`Backend`), and everything a
launcher implies before training starts: which engine launched this process, the job's start time
agreed by every rank, what non-main ranks must not write, and how a failed rank is reported.

An engine is one module in this package (``single``, ``horovod``, ``torch``) plus one YAML file in
``conf/distributed/`` (modules named ``_name`` are skipped: an engine's own helpers). It defines:

- ``NAME``: the engine's name in ``distributed.name``;
- ``LAUNCH_VARS``: ``(rank, size, local rank)`` environment variables its launcher sets, so that
  ``distributed=auto`` can tell that a process was started by it;
- ``Settings``: a frozen dataclass of its ``distributed.*`` keys, checked by
  :func:`pyrotrain.schema.parse` like every other section (``name`` is its first field);
- ``create(settings) -> Backend`` (its ``reduce`` a :class:`Reducer` around the engine's own
  :data:`Travel`: how one step's buffers go over the wire), and
  ``share_start_time(start) -> float``, a collective that gives every rank rank 0's start time
  (Hydra names the run directory after it).

Nothing here imports an engine's library: an engine module imports it when it is created.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import os
import pkgutil
import signal
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, cast, runtime_checkable

import pyro
import torch
from omegaconf import OmegaConf

from .._compat_hydra import skip_multirun_yaml
from ..errors import PyrotrainError
from ..schema import parse, parse_named, setting

# -- settings every engine has (each engine's Settings dataclass declares them with these) ------


def predivide_setting() -> Any:
    return setting(
        "op=average only: divide by this before the sum and by (ranks / this) after it, "
        "against fp16 overflow",
        default=1.0,
        minimum=0,
        exclusive=True,
    )


def lr_scaling_setting() -> Any:
    return setting(
        "multiply every group's step size (lr; eta for adagrad_rmsprop; the optimizer's "
        "default when unset) by the number of ranks N (linear) or sqrt(N) when the run is built",
        default="none",
    )


def check_predivide(settings: Any, key: str) -> None:
    """``gradient_predivide_factor`` splits an average: any other ``op`` must leave it at 1."""
    if settings.gradient_predivide_factor != 1 and settings.op != "average":
        raise PyrotrainError(
            "gradient_predivide_factor splits an average, so it needs op=average",
            key=f"{key}.gradient_predivide_factor",
            value=settings.gradient_predivide_factor,
            hint=f"Set distributed.op=average or leave the factor at 1 (op is '{settings.op}')",
        )


#: The engine whose settings ``distributed=auto`` checks when no launcher started the process.
DEFAULT_ENGINE = "horovod"
LR_SCALINGS = ("none", "linear", "sqrt")


@runtime_checkable
class Backend(Protocol):
    """The collectives the training loop uses. In one process every one is a no-op.

    Attributes: ``name`` (the engine), ``rank`` and ``size`` (this process's place in the job),
    ``local_rank``, ``is_main`` (rank 0: the one that prints and writes), and ``lr_scale`` (what
    ``distributed.lr_scaling`` multiplies every group's step size by at this world size).
    """

    name: str
    rank: int
    size: int
    local_rank: int
    is_main: bool
    lr_scale: float

    def broadcast_parameters(self, params: Iterable[torch.Tensor]) -> None:
        """Overwrite every rank's ``params`` with rank 0's (after the first backward pass, when
        lazily created parameters exist)."""

    def reduce(self, params: Iterable[torch.Tensor], loss: float, stop: int) -> tuple[float, int]:
        """Make every rank's ``p.grad`` the mean over ranks, in place, in as few collectives as
        the engine allows (``op=sum``: the sum). ``stop`` is this rank's stop signal (0, or one of
        :data:`STOP_SIGNALS`). Return the ranks' mean ``loss`` and the signal every rank stops
        for after this step: 0 when no rank got one, else the first of :data:`STOP_SIGNALS` that
        some rank got (:func:`stop_signal`), so all ranks act alike."""
        ...

    def gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        ...

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def params_in_sync(self) -> bool:
        """Whether every rank holds bitwise the same Pyro parameters."""
        ...


class PeerFailure(RuntimeError):
    """A collective failed because another rank stopped (that rank's own message says why)."""


def lr_factor(lr_scaling: str, world_size: int) -> float:
    """What ``distributed.lr_scaling`` multiplies step sizes by at ``world_size`` ranks."""
    return {"none": 1.0, "linear": float(world_size), "sqrt": math.sqrt(world_size)}[lr_scaling]


# -- what engines share ---------------------------------------------------------------------------


class _RankTag(logging.Filter):
    """Prefixes every log record of a non-main rank with ``[rank R]``."""

    def __init__(self, rank: int):
        super().__init__()
        self.prefix = f"[rank {rank}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = f"{self.prefix}{record.msg}"
        return True


def tag_rank_output(rank: int) -> None:
    """Tag this rank's log records and warnings with its rank (idempotent)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, _RankTag) for f in handler.filters):
            handler.addFilter(_RankTag(rank))
    if not getattr(warnings.formatwarning, "_pyrotrain_rank", None) == rank:
        plain = getattr(warnings.formatwarning, "_pyrotrain_plain", warnings.formatwarning)

        def formatwarning(*args: Any, **kwargs: Any) -> str:
            return f"[rank {rank}] " + plain(*args, **kwargs)

        formatwarning._pyrotrain_rank = rank  # type: ignore[attr-defined]
        formatwarning._pyrotrain_plain = plain  # type: ignore[attr-defined]
        warnings.formatwarning = formatwarning


@dataclass
class Layout:
    """This step's parameters in name order, split by dtype, and their fingerprint."""

    names: list[str]
    params: list[torch.Tensor]
    by_dtype: list[tuple[str, list[int]]]  # (dtype name, positions in params)
    fingerprint: float


def layout_of(params: Iterable[torch.Tensor]) -> Layout:
    store = pyro.get_param_store()
    named = sorted(((cast(str, store.param_name(p)), p) for p in params), key=lambda t: t[0])
    names = [n for n, _ in named]
    ps = [p for _, p in named]
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(ps):
        groups.setdefault(str(p.dtype).replace("torch.", ""), []).append(i)
    text = ";".join(f"{n}:{tuple(p.shape)}:{p.dtype}" for n, p in named)
    # A small integer: exact in a float32 buffer when averaged, and a layout mismatch moves the
    # average by at least 1 / ranks.
    fingerprint = float(zlib.crc32(text.encode()) % 1021)
    return Layout(names, ps, sorted(groups.items()), fingerprint)


#: The signals that ask a run to stop after the current step, the one that wins first: when ranks
#: got different ones, every rank stops as if it had got the first (SIGTERM: the scheduler's).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_counts(stop: int) -> list[float]:
    """One slot per signal of :data:`STOP_SIGNALS` (1 for ``stop``'s, else 0): summed over ranks,
    each slot counts the ranks that got that signal, so no sum of two kinds reads as a third."""
    if stop and stop not in STOP_SIGNALS:
        raise ValueError(f"stop is 0 or one of {[int(s) for s in STOP_SIGNALS]}, not {stop}")
    return [float(stop == s) for s in STOP_SIGNALS]


def stop_signal(counts: Iterable[int]) -> int:
    """The signal the ranks stop for, from their :func:`stop_counts` summed: the first of
    :data:`STOP_SIGNALS` some rank got, or 0."""
    return next((int(s) for s, n in zip(STOP_SIGNALS, counts, strict=True) if n > 0), 0)


#: How an engine carries one step's buffers: given the layout, its gradients (zeros where a rank
#: has none) and the meta vector (float64), reduce them over the ranks and return the gradients
#: (flat views, in layout order) and the ranks' mean of the meta vector (float64).
Travel = Callable[
    [Layout, list[torch.Tensor], torch.Tensor], tuple[list[torch.Tensor], torch.Tensor]
]


class Reducer:
    """The one ``Backend.reduce`` of every engine; the engine supplies only ``travel``.

    Each step's meta vector is ``[loss, layout fingerprint, one count per stop signal, one
    has-a-gradient flag per parameter]``: the loss the ranks report (plateau schedulers see it)
    is their mean without a collective of its own; the stop signal is decoded from counts, not
    from a sum of signal numbers; a parameter whose gradient is None on some ranks gets the
    others' with zeros from those (as in ``hvd.DistributedOptimizer``) while one with no gradient
    anywhere stays None; and ranks whose traces hold different parameters fail loudly instead of
    mixing up gradients.
    """

    def __init__(self, rank: int, size: int, travel: Travel):
        self.rank, self.size, self.travel = rank, size, travel
        self._key: frozenset | None = None
        self._layout: Layout | None = None

    @torch.no_grad()
    def __call__(
        self, params: Iterable[torch.Tensor], loss: float = 0.0, stop: int = 0
    ) -> tuple[float, int]:
        params = params if isinstance(params, (set, frozenset)) else set(params)
        if self.size == 1:
            return float(loss), stop
        key = frozenset(params)
        if key != self._key:  # the layout of a step's parameters rarely changes: keep it
            self._key, self._layout = key, layout_of(params)
        layout = self._layout
        assert layout is not None  # set with _key
        raw = [p.grad for p in layout.params]
        meta = torch.tensor(
            [float(loss), layout.fingerprint, *stop_counts(stop)]
            + [float(g is not None) for g in raw],
            dtype=torch.float64,
        )
        grads = [
            g if g is not None else torch.zeros_like(p)
            for g, p in zip(raw, layout.params, strict=True)
        ]
        reduced, mean = self.travel(layout, grads, meta)
        if abs(mean[1].item() - layout.fingerprint) > 0.01:
            raise RuntimeError(
                f"rank {self.rank}: the ranks' traces hold different parameters this step "
                f"(this rank: {', '.join(layout.names)}); every rank must create and use the "
                "same Pyro parameters"
            )
        flags = 2 + len(STOP_SIGNALS)
        has_grad = (mean[flags:] > 0).tolist()
        for p, g, keep in zip(layout.params, reduced, has_grad, strict=True):
            p.grad = g.view_as(p) if keep else None
        counts = [round(c * self.size) for c in mean[2:flags].tolist()]
        return mean[0].item(), stop_signal(counts)


def param_digest() -> str:
    """A digest of every Pyro parameter's name and bits: ranks in sync have the same one."""
    digest = hashlib.sha1()
    for name, p in sorted(pyro.get_param_store().named_parameters()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# -- engines and launches ------------------------------------------------------------------------


def engine_modules() -> list[str]:
    """The engine modules: every module of this package but this one and the private ones (an
    engine's own helpers, ``_name``), so that a new engine is one new module (and its YAML file)
    and nothing else."""
    here = Path(__file__).parent
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(here)])
        if m.name != "base" and not m.name.startswith("_")
    )


def engine(name: str) -> ModuleType:
    """The module of engine ``name`` (see the module doc)."""
    for module_name in engine_modules():
        module = _module(module_name)
        if module.NAME == name:
            return module
    raise KeyError(name)


def engine_names() -> list[str]:
    return [_module(module_name).NAME for module_name in engine_modules()]


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.{name}")


@dataclass(frozen=True)
class Launch:
    """This process's place in a multi-process launch, and the engine whose launcher made it."""

    rank: int
    size: int
    local_rank: int
    engine: str


def launch_env() -> Launch | None:
    """This process's place in a multi-process launch, from the launchers' variables; None when
    it was started on its own."""
    for module_name in engine_modules():
        module = _module(module_name)
        for rank_var, size_var, local_var in module.LAUNCH_VARS:
            if rank_var in os.environ and size_var in os.environ:
                try:
                    rank, size = int(os.environ[rank_var]), int(os.environ[size_var])
                    local = int(os.environ.get(local_var, rank))
                except ValueError:
                    continue
                return Launch(rank, size, local, module.NAME)
    return None


def process_rank() -> int:
    """0 unless this process is a non-main rank of a launch: who may write and print."""
    launch = launch_env()
    return launch.rank if launch is not None else 0


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one process that writes outputs."""
    return process_rank() == 0


# -- the distributed section ---------------------------------------------------------------------


@dataclass(frozen=True)
class DistributedConfig:
    """The parsed ``distributed`` section: what was asked for (``auto`` or an engine), the engine
    this process runs, and that engine's settings."""

    requested: str
    engine: str
    settings: Any


def parse_distributed(node: Any) -> DistributedConfig:
    """Check the ``distributed`` section against the engine it selects (``auto``: the launcher's
    engine, or the default engine's keys when no launcher started this process, so that a bad
    value is caught before it is run at scale)."""
    named = parse_named(node if node is not None else "auto", "distributed")
    names = engine_names()
    choices = ["auto", *names]
    if named.name not in choices:
        raise PyrotrainError(
            "unknown distributed engine", key="distributed.name", value=named.name, choices=choices
        )
    launch = launch_env()
    if named.name == "auto":
        running = launch.engine if launch is not None else _module("single").NAME
        checked_by = launch.engine if launch is not None else DEFAULT_ENGINE
    else:
        running = checked_by = named.name
        if launch is not None and launch.size > 1 and launch.engine != named.name:
            raise PyrotrainError(
                f"this process is rank {launch.rank} of {launch.size} started by {launch.engine}'s "
                f"launcher, but distributed={named.name} does not run under it: each rank would "
                "train its own copy and write the same files",
                key="distributed",
                value=named.name,
                choices=["auto", launch.engine],
                hint="Use distributed=auto (the default) under the launcher, or run without it",
            )
    settings = parse(
        engine(checked_by).Settings, {"name": named.name, **named.kwargs}, "distributed"
    )
    if checked_by != running:
        settings = engine(running).Settings(name=named.name)
    return DistributedConfig(requested=named.name, engine=running, settings=settings)


def create_backend(config: DistributedConfig) -> Backend:
    return engine(config.engine).create(config.settings)


# -- before Hydra runs: the start time, and quiet non-main ranks ---------------------------------

START_TIME_VAR = "PYROTRAIN_START_TIME"
_PROCESS_START = time.time()

# Under a launcher every rank runs Hydra; these keep the others from writing in the run dir.
_NON_MAIN_OVERRIDES = (
    "hydra.output_subdir=null",  # no .hydra/
    "hydra/job_logging=stdout",  # no pyrotrain.log
    "hydra.job_logging.root.level=WARNING",  # warnings only, tagged [rank R] by the backend
    "hydra.hydra_logging.root.level=WARNING",
)


def start_process(argv: list[str]) -> Launch | None:
    """Under a launcher: agree on rank 0's start time (Hydra's run and sweep dirs are named
    after it) and keep the other ranks from writing anything (``argv`` gets their overrides)."""
    start = time.time()
    launch = launch_env()
    if launch is not None:
        start = engine(launch.engine).share_start_time(start)
        if launch.rank != 0:
            keys = tuple(o.split("=")[0] for o in _NON_MAIN_OVERRIDES)
            argv[1:] = [a for a in argv[1:] if not a.startswith(keys)]
            argv.extend(_NON_MAIN_OVERRIDES)
            skip_multirun_yaml()  # rank 0's copy is the one to keep
    os.environ[START_TIME_VAR] = repr(start)
    return launch


def failure_message(exc: BaseException, launch: Launch) -> str:
    """How a rank that failed (not by the user's mistake) reports itself: a peer's failure in its
    own words, this rank's with its traceback printed first."""
    if isinstance(exc, PeerFailure):
        return str(exc)
    import traceback

    traceback.print_exception(exc, file=sys.stderr)
    return f"rank {launch.rank} failed: {type(exc).__name__}: {exc}"


def _start_time(pattern: str) -> str:
    """``${pyrotrain_start:%H-%M-%S}``: rank 0's start time (set by :func:`start_process` in
    every rank's environment, so Hydra's joblib workers see it too), else this process's."""
    value = os.environ.get(START_TIME_VAR)
    try:
        stamp = float(value) if value else _PROCESS_START
    except ValueError:
        stamp = _PROCESS_START
    return datetime.fromtimestamp(stamp).strftime(pattern)


OmegaConf.register_new_resolver("pyrotrain_start", _start_time, replace=True)
