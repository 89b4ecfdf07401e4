"""Backends: how many processes share a job, and how they agree on gradients and parameters.

A backend is a small object (``rank``, ``size``, ``is_main``, ``backward_passes_per_step``,
``lr_scale``, ``broadcast_parameters``, ``average_gradients``, ``average``, ``gather_object``,
``broadcast_object``, ``barrier``, ``params_in_sync``) so the training loop has no
``if horovod:``. :class:`SingleProcess` is the trivial one;
:class:`~pyrotrain.distributed.horovod.HorovodBackend` the real one.

This module imports nothing from Horovod: a launcher's environment variables say whether this
process is one of several, and ``horovod.torch`` is imported only when it is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from omegaconf import OmegaConf

from ..config import named_section
from ..errors import PyrotrainError
from .single import SingleProcess

BACKENDS = ("auto", "none", "horovod")

# (rank, size, local rank) variables of the launchers Horovod runs under: horovodrun with Gloo,
# and mpirun (Open MPI; MPICH and Intel MPI) when horovodrun uses MPI or is bypassed.
_LAUNCH_VARS = (
    ("HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
)


@dataclass(frozen=True)
class Launch:
    rank: int
    size: int
    local_rank: int


def launch_env() -> Launch | None:
    """This process's place in a multi-process launch, from the launcher's variables; None when
    it was started on its own."""
    for rank_var, size_var, local_var in _LAUNCH_VARS:
        if rank_var in os.environ and size_var in os.environ:
            try:
                rank, size = int(os.environ[rank_var]), int(os.environ[size_var])
                local = int(os.environ.get(local_var, rank))
            except ValueError:
                continue
            return Launch(rank, size, local)
    return None


def process_rank() -> int:
    """0 unless this process is a non-main rank of a launch: who may write and print."""
    launch = launch_env()
    return launch.rank if launch is not None else 0


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one process that writes outputs."""
    return process_rank() == 0


def build_backend(node: Any) -> Any:
    """The backend the ``distributed`` section asks for (``auto``: Horovod under a launcher)."""
    name, kwargs = named_section(node, "distributed")
    if name not in BACKENDS:
        raise PyrotrainError(
            "unknown distributed backend", key="distributed.name", value=name, choices=BACKENDS
        )
    launch = launch_env()
    if name == "none":
        if kwargs:
            raise PyrotrainError(
                "distributed=none takes no settings",
                key="distributed",
                value=kwargs,
                hint="Use distributed=auto or distributed=horovod to set Horovod's keys",
            )
        if launch is not None and launch.size > 1:
            raise PyrotrainError(
                f"this process is rank {launch.rank} of {launch.size} started by horovodrun (or "
                "mpirun), but distributed=none trains in one process: each rank would train its "
                "own copy and write the same files",
                key="distributed",
                value="none",
                choices=["auto", "horovod"],
                hint="Use distributed=auto (the default) under horovodrun, or run without it",
            )
        return SingleProcess()
    from .horovod import HorovodBackend, HorovodSettings

    settings = HorovodSettings.parse(kwargs)  # checked even where it goes unused
    if name == "auto" and launch is None:
        return SingleProcess()
    return HorovodBackend(settings)


def scale_learning_rates(specs: list, factor: float) -> None:
    """Multiply every trained group's ``lr`` (``eta`` for AdagradRMSProp) by ``factor``, in place.

    A group that leaves the rate at its optimizer's default gets the default times ``factor``.
    """
    if factor == 1.0:
        return
    import inspect

    from ..registry import OPTIMIZERS

    for spec in specs:
        if spec.frozen:
            continue
        args = spec.optimizer_args
        key = next((k for k in ("lr", "eta") if k in args), None)
        if key is None:
            cls = OPTIMIZERS.get(spec.optimizer, f"{spec.key}.optimizer.name")
            try:
                params = inspect.signature(cls).parameters
            except (TypeError, ValueError):
                params = {}
            key = next((k for k in ("lr", "eta") if k in params), None)
            default = params[key].default if key is not None else None
            if not isinstance(default, (int, float)) or isinstance(default, bool):
                raise PyrotrainError(
                    f"lr_scaling cannot scale group '{spec.name}': its optimizer "
                    f"'{spec.optimizer}' has no numeric lr or eta",
                    key="distributed.lr_scaling",
                    hint=f"Set {spec.key}.optimizer.lr explicitly, or use lr_scaling=none",
                )
            args[key] = default
        args[key] = float(args[key]) * factor


# -- the job's start time, the same on every rank -------------------------------------------------

START_TIME_VAR = "PYROTRAIN_START_TIME"
_PROCESS_START = time.time()


def _start_time(pattern: str) -> str:
    """``${pyrotrain_start:%H-%M-%S}``: rank 0's start time (set by the CLI in every rank's
    environment, so Hydra's joblib workers see it too), else this process's."""
    value = os.environ.get(START_TIME_VAR)
    try:
        stamp = float(value) if value else _PROCESS_START
    except ValueError:
        stamp = _PROCESS_START
    return datetime.fromtimestamp(stamp).strftime(pattern)


OmegaConf.register_new_resolver("pyrotrain_start", _start_time, replace=True)

__all__ = [
    "BACKENDS",
    "Launch",
    "SingleProcess",
    "build_backend",
    "is_main_process",
    "launch_env",
    "process_rank",
    "scale_learning_rates",
]
