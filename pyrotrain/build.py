"""Build a run from its checked config: data -> model -> guide -> ELBO -> stack -> backend.

:func:`build` takes a :class:`~pyrotrain.config.RunConfig` (or a composed config, which it parses
first), so everything a user can get wrong has been refused before anything is built; what can
only be known once the data is loaded (a batch larger than the data, a model that rejects its
settings) is refused here, still before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from omegaconf import DictConfig

from .calls import Binding
from .checkpoint import check_compatible, check_run_dir, find_resume, shape_of
from .config import RunConfig, parse_config
from .console import screen
from .construct import build_guide, build_model, check_sites
from .data import BatchOrder, Dataset
from .distributed import Backend, create_backend
from .errors import PyrotrainError
from .optim.spec import GroupSpec
from .optim.stack import OptimizerStack
from .registry import DATASETS, ELBOS, call_with_kwargs, rate_default
from .schema import Named


@dataclass
class Run:
    """Everything built from the config, ready to fit."""

    config: RunConfig
    data: Dataset
    model: Callable
    guide: Callable
    elbo: Any
    stack: OptimizerStack
    backend: Backend
    device: torch.device
    dtype: torch.dtype
    order: BatchOrder  # this rank's minibatches
    steps_per_epoch: int  # optimizer steps per pass over this rank's rows
    model_kwargs: frozenset[str] | None  # None: the model takes **kwargs
    shape: dict[str, Any]  # what a checkpoint must match
    resume: tuple[Path, dict[str, Any]] | None = None  # (file, payload) to continue from
    binding: Binding | None = None  # a step's rows -> the model's arguments (calls.py)

    @property
    def total_steps(self) -> int:
        return self.stack.total_steps or 0


@contextlib.contextmanager
def torch_defaults(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """Make tensors that models create with plain ``torch.zeros(...)`` match the run's settings."""
    old_dtype = torch.get_default_dtype()
    old_device = torch.get_default_device()
    # A default device is a Python-level TorchFunctionMode that slows every torch call: install
    # one only when the run's device differs, and never leave one behind for the CPU.
    change_device = device != old_device
    torch.set_default_dtype(dtype)
    if change_device:
        torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_dtype(old_dtype)
        if change_device:
            torch.set_default_device(None if old_device.type == "cpu" else old_device)


def build(cfg: RunConfig | DictConfig | dict[str, Any], run_dir: Path | None = None) -> Run:
    """Check ``cfg`` and build every part of the run. Raises PyrotrainError on bad input.

    ``run_dir`` is where the run will write; ``trainer.resume=auto`` looks for checkpoints there.
    """
    config = cfg if isinstance(cfg, RunConfig) else parse_config(cfg)
    trainer = config.trainer
    backend = create_backend(config.distributed)
    device = _resolve_device(trainer.device)
    dtype = getattr(torch, trainer.dtype)
    data = build_data(config.data, config.seed).to(device, dtype)
    batch_size = _batch_size(trainer.batch_size, data.size, backend)

    pyro.set_rng_seed(config.seed)  # models may draw their initial weights (nn.Linear) when built
    with torch_defaults(dtype, device):
        model, owner = build_model(config.model, data)
        guide = build_guide(config.guide, model, owner, data)
        elbo = call_with_kwargs(
            ELBOS.get(config.elbo.name, "elbo.name"), config.elbo.kwargs, "elbo"
        )
        whole = batch_size is None and backend.size == 1
        binding = Binding(data, model, guide, whole, _model_key(config))
        # A user's own guide, or the guide of a user's model on their own data: built-in code and
        # its tests' models run only when trained.
        if config.guide.name == "custom" or (config.guide.name == "model" and data.call):
            check_sites(model, guide, binding.sample(), "guide")
    _check_evaluation(config, model, data)
    order = BatchOrder(data.size, batch_size, config.seed, backend.rank, backend.size)
    steps_per_epoch = math.ceil(order.steps_per_epoch / trainer.accumulate_grad_batches)
    if trainer.epochs is not None:
        total_steps = trainer.epochs * steps_per_epoch
    else:
        total_steps = trainer.steps or 0
    total_epochs = trainer.epochs or math.ceil(total_steps / steps_per_epoch)
    groups = _scaled_rates(config, backend.lr_scale)
    stack = OptimizerStack(
        groups,
        config.dct_marks,
        total_steps=total_steps,
        total_epochs=total_epochs,
        # each rank records its own rows; the summed gradients cover every rank's
        row_records=backend.size == 1,
    )
    guide = stack.mark_guide(guide)  # dct: [{plate: ...}] marks what the guide creates there
    shape = shape_of(config.plain, stack.layout(), backend.size)
    resume = _load_resume(config, run_dir, backend, shape, total_steps)
    return Run(
        config=config,
        data=data,
        model=model,
        guide=guide,
        elbo=elbo,
        stack=stack,
        backend=backend,
        device=device,
        dtype=dtype,
        order=order,
        steps_per_epoch=steps_per_epoch,
        model_kwargs=binding.model_kwargs,
        shape=shape,
        resume=resume,
        binding=binding,
    )


def _model_key(config: RunConfig) -> str:
    return "model.target" if config.model.name == "custom" else "model"


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PyrotrainError(
            "CUDA is not available on this machine",
            key="trainer.device",
            value=name,
            choices=["cpu", "auto"],
        )
    return torch.device(name)


def _batch_size(batch_size: int | None, rows: int, backend: Backend) -> int | None:
    """The batch each rank draws: ``trainer.batch_size``, or the rank's whole shard when the
    shard is smaller (with a warning; several ranks split the rows between them)."""
    if batch_size is None:
        return None
    if batch_size > rows:
        raise PyrotrainError(
            f"the batch is larger than the training data ({rows} rows)",
            key="trainer.batch_size",
            value=batch_size,
            hint=f"Use at most {rows}, or null for the full data",
        )
    shard = rows // backend.size
    if shard < 1:
        raise PyrotrainError(
            f"{backend.size} ranks cannot share {rows} rows: a rank would get none",
            key="distributed",
            value=backend.size,
            hint=f"Run at most {rows} ranks",
        )
    if batch_size > shard:
        if backend.is_main:
            screen(stderr=True).print(
                f"[yellow]warning:[/] trainer.batch_size={batch_size} is more than each of the "
                f"{backend.size} ranks' share of the {rows} rows: each rank's batch is its whole "
                f"shard of {shard} rows (batch_size is per rank; set it to at most {shard} to "
                "keep minibatches)",
                highlight=False,
            )
        return shard
    return batch_size


def _check_evaluation(config: RunConfig, model: Callable, data: Dataset) -> None:
    """Evaluation during training needs a model that evaluates and rows held out to score."""
    every = config.trainer.eval_every
    if every is None:
        return
    if getattr(model, "evaluate", None) is None:
        raise PyrotrainError(
            "this model has no evaluate method, so there is nothing to evaluate during training",
            key="trainer.eval_every",
            value=every,
            hint="Leave eval_every null, or give the model evaluate(guide, data, num_samples)",
        )
    if not data.eval:
        raise PyrotrainError(
            "the data holds out no rows to evaluate on (data.eval_fraction=0)",
            key="trainer.eval_every",
            value=every,
        )


def _scaled_rates(config: RunConfig, factor: float) -> list[GroupSpec]:
    """The groups with their step sizes times ``factor`` (``distributed.lr_scaling``); a group
    that leaves its rate at the optimizer's default gets the default times ``factor``."""
    if factor == 1.0:
        return config.groups

    scaled = []
    for spec in config.groups:
        if spec.frozen:
            scaled.append(spec)
            continue
        rate = spec.optimizer_args.get(spec.rate) if spec.rate else None
        if rate is None and spec.rate is not None:
            rate = rate_default(spec.optimizer, spec.rate)
        if rate is None:
            raise PyrotrainError(
                f"lr_scaling cannot scale group '{spec.name}': its optimizer '{spec.optimizer}' "
                "has no numeric step size",
                key="distributed.lr_scaling",
                hint=f"Set {spec.key}.optimizer.lr explicitly, or use lr_scaling=none",
            )
        assert spec.rate is not None  # a rate was found for it
        args = {**spec.optimizer_args, spec.rate: float(rate) * factor}
        scaled.append(dataclasses.replace(spec, optimizer_args=args))
    return scaled


def build_data(data: Named, seed: int) -> Dataset:
    """The dataset ``data`` names, as its loader returns it (the run then moves it to its device
    and dtype); a loader that takes a ``seed`` gets the run's unless ``data`` sets one."""
    loader = DATASETS.get(data.name, "data.name")
    kwargs = dict(data.kwargs)
    if "seed" in inspect.signature(loader).parameters and "seed" not in kwargs:
        kwargs["seed"] = seed
    return call_with_kwargs(loader, kwargs, "data")


def _load_resume(
    config: RunConfig,
    run_dir: Path | None,
    backend: Backend,
    shape: dict[str, Any],
    total_steps: int,
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint ``trainer.resume`` names, read by rank 0 and sent to the others (which may
    not see its file system), after checking that it fits this config; and, first, that
    ``run_dir`` holds no other run's outputs that this run would mix with its own."""
    trainer = config.trainer
    found: Any = None  # every rank takes part in the broadcast, whatever its run_dir
    if backend.is_main:
        try:
            if run_dir is not None:
                check_run_dir(run_dir, trainer.resume)
            if trainer.resume is not None:
                found = find_resume(trainer.resume, run_dir)
            if found is not None:
                check_compatible(found[1], shape, found[0], config.seed)
                if found[1]["step"] >= total_steps:
                    raise PyrotrainError(
                        f"the checkpoint {found[0]} is at step {found[1]['step']}, and this run "
                        f"ends at step {total_steps}: there is nothing left to train",
                        key="trainer.steps",
                        value=trainer.steps,
                        hint=f"Set trainer.steps above {found[1]['step']} to train further",
                    )
        except PyrotrainError as e:
            found = e
    found = backend.broadcast_object(found)
    if isinstance(found, PyrotrainError):
        raise found
    return found
