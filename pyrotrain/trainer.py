"""Build a run from a composed config and fit it: data -> model -> guide -> ELBO -> stack -> loop.

Everything a user can get wrong is checked in :func:`build` before the first step, so a bad config
fails fast with a :class:`~pyrotrain.errors.PyrotrainError` and writes nothing.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from omegaconf import DictConfig, OmegaConf
from pyro.contrib.forecast.util import MarkDCTParamMessenger
from rich.console import Console

from .config import TrainerConfig, check_trainer_against_data, named_section, parse_section
from .data import BatchOrder, Dataset
from .distributed import build_backend, scale_learning_rates
from .errors import PyrotrainError
from .metrics import LOGGERS, MetricsSinks, ProgressDisplay, SmoothedLoss
from .optim.stack import OptimizerStack, parse_groups
from .registry import DATASETS, ELBOS, GUIDES, MODELS, call_with_kwargs, import_object

TOP_LEVEL_KEYS = (
    "model",
    "data",
    "guide",
    "elbo",
    "optim",
    "scheduler",
    "distributed",
    "trainer",
    "seed",
    "logger",
)


@dataclass
class Run:
    """Everything built from the config, ready to fit."""

    cfg: DictConfig
    trainer: TrainerConfig
    seed: int
    data: Dataset
    model: Callable
    guide: Callable
    elbo: Any
    stack: OptimizerStack
    backend: Any
    device: torch.device
    dtype: torch.dtype
    model_kwargs: frozenset[str] | None  # None: the model takes **kwargs
    logger: str = "jsonl"


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


def _accepted_kwargs(fn: Callable) -> frozenset[str] | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _build_model(node: Any, data: Dataset) -> Callable:
    name, kwargs = named_section(node, "model")
    if name == "custom":
        target = import_object(kwargs.pop("target", None) or "", "model.target")
    else:
        target = MODELS.get(name, "model.name")
    if inspect.isclass(target):
        return call_with_kwargs(target, kwargs, "model", data)
    if kwargs:
        raise PyrotrainError(
            "this model is a function, so it takes no model settings",
            key="model",
            value=kwargs,
        )
    return target


def _build_guide(node: Any, model: Callable) -> Callable:
    name, kwargs = named_section(node, "guide")
    if name == "model":
        guide = getattr(model, "guide", None)
        if guide is None:
            raise PyrotrainError(
                "this model defines no guide of its own",
                key="guide",
                value=name,
                choices=GUIDES.names(),
            )
        if kwargs:
            raise PyrotrainError("guide=model takes no settings", key="guide", value=kwargs)
        return guide
    factory = GUIDES.get(name, "guide.name")
    init = kwargs.get("init_loc_fn")
    if isinstance(init, str):
        kwargs["init_loc_fn"] = (
            import_object(init, "guide.init_loc_fn")
            if ":" in init
            else import_object(f"pyro.infer.autoguide.initialization:{init}", "guide.init_loc_fn")
        )
    return call_with_kwargs(factory, kwargs, "guide", model)


def _build_elbo(node: Any) -> Any:
    name, kwargs = named_section(node, "elbo")
    cls = ELBOS.get(name, "elbo.name")
    return call_with_kwargs(cls, kwargs, "elbo")


def build(cfg: DictConfig) -> Run:
    """Validate ``cfg`` and build every part of the run. Raises PyrotrainError on bad input."""
    for key in cfg:
        if key not in TOP_LEVEL_KEYS:
            raise PyrotrainError(
                f"'{key}' is not a pyrotrain setting",
                key=str(key),
                value=cfg[key],
                choices=TOP_LEVEL_KEYS,
            )
    trainer = parse_section(TrainerConfig, cfg.get("trainer"), "trainer")
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise PyrotrainError("seed must be a non-negative integer", key="seed", value=seed)
    # Check the optimizer stack's config before loading anything.
    specs, marks = parse_groups(cfg.get("optim"), cfg.get("scheduler"))
    backend = build_backend(cfg.get("distributed", "auto"))
    scale_learning_rates(specs, backend.lr_scale)  # distributed.lr_scaling, x1 in one process
    logger, _ = named_section(cfg.get("logger", "jsonl"), "logger")
    if logger not in LOGGERS:
        raise PyrotrainError("unknown metrics logger", key="logger", value=logger, choices=LOGGERS)
    device = _resolve_device(trainer.device)
    dtype = getattr(torch, trainer.dtype)

    data_name, data_kwargs = named_section(cfg.get("data"), "data")
    loader = DATASETS.get(data_name, "data.name")
    if "seed" in inspect.signature(loader).parameters and "seed" not in data_kwargs:
        data_kwargs["seed"] = seed
    data = call_with_kwargs(loader, data_kwargs, "data").to(device, dtype)
    check_trainer_against_data(trainer, data.size)
    if backend.size > 1 and (trainer.batch_size or 0) > data.size // backend.size:
        raise PyrotrainError(
            f"each of the {backend.size} ranks trains on {data.size // backend.size} of the "
            f"{data.size} rows, fewer than one batch",
            key="trainer.batch_size",
            value=trainer.batch_size,
            hint=f"Use at most {data.size // backend.size} (batch_size is per rank)",
        )

    with torch_defaults(dtype, device):
        model = _build_model(cfg.get("model"), data)
        guide = _build_guide(cfg.get("guide", "auto_normal"), model)
        elbo = _build_elbo(cfg.get("elbo", "trace"))
    for mark in marks:
        if mark.plate is not None:
            guide = MarkDCTParamMessenger(mark.plate)(guide)

    order = BatchOrder(data.size, trainer.batch_size, seed, backend.rank, backend.size)
    steps_per_epoch = _steps_per_epoch(order, backend)
    total_steps = trainer.epochs * steps_per_epoch if trainer.epochs is not None else trainer.steps
    if total_steps is None:
        raise PyrotrainError("set trainer.steps or trainer.epochs", key="trainer.steps", value=None)
    total_epochs = trainer.epochs or math.ceil(total_steps / steps_per_epoch)
    stack = OptimizerStack(specs, marks, total_steps=total_steps, total_epochs=total_epochs)
    return Run(
        cfg=cfg,
        trainer=trainer,
        seed=seed,
        data=data,
        model=model,
        guide=guide,
        elbo=elbo,
        stack=stack,
        backend=backend,
        device=device,
        dtype=dtype,
        model_kwargs=_accepted_kwargs(model),
        logger=logger,
    )


def _steps_per_epoch(order: BatchOrder, backend: Any) -> int:
    """Optimizer steps per pass over this rank's rows (a step takes backward_passes_per_step
    minibatches)."""
    return math.ceil(order.steps_per_epoch / backend.backward_passes_per_step)


def _versions() -> dict[str, str]:
    import hydra
    import omegaconf

    from . import __version__

    return {
        "pyrotrain": __version__,
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
        "python": platform.python_version(),
    }


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_params(path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    pyro.get_param_store().save(tmp)
    os.replace(tmp, path)


class Trainer:
    """Runs the SVI loop of a built :class:`Run` and writes its outputs to ``run_dir``."""

    def __init__(self, run: Run, run_dir: Path | None = None, console: Console | None = None):
        self.run = run
        self.writes = run_dir is not None and run.backend.is_main
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.console = console or Console()

    def _batch(self, index: torch.Tensor) -> dict[str, Any]:
        data = self.run.data
        index = index.to(self.run.device)
        batch: dict[str, Any] = {k: v[index] for k, v in data.train.items()}
        batch["index"] = index
        batch["size"] = data.size
        accepted = self.run.model_kwargs
        if accepted is not None:
            batch = {k: v for k, v in batch.items() if k in accepted}
        return batch

    def fit(self) -> dict[str, Any]:
        run = self.run
        with torch_defaults(run.dtype, run.device):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        run, t, stack, backend = self.run, self.run.trainer, self.run.stack, self.run.backend
        pyro.set_rng_seed(run.seed)
        order = BatchOrder(run.data.size, t.batch_size, run.seed, backend.rank, backend.size)
        total = stack.total_steps
        accumulate = backend.backward_passes_per_step
        steps_per_epoch = _steps_per_epoch(order, backend)
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics = MetricsSinks(self.run_dir if self.writes else None, (run.logger,))
        display = ProgressDisplay(total, t.progress if backend.is_main else "none", self.console)
        smoothed = SmoothedLoss(t.smoothing)
        batches = iter(order)
        epoch_losses: list[float] = []
        window_start, window_samples, window_losses = time.perf_counter(), 0, []
        start = time.perf_counter()
        loss = float("nan")
        try:
            for step in range(1, total + 1):
                if step == 2:  # throughput leaves out the first step's one-time setup
                    after_first = time.perf_counter()
                params: set[torch.Tensor] = set()
                losses, rows = 0.0, 0
                for _ in range(accumulate):  # gradients add up in p.grad
                    epoch, index = next(batches)
                    batch = self._batch(index)
                    with poutine.trace(param_only=True) as capture:
                        losses += float(self._loss_and_grads(batch, first=step == 1))
                    params.update(s["value"].unconstrained() for s in capture.trace.nodes.values())
                    rows += len(index)
                if step == 1:
                    self._first_step(params)
                # One collective: the mean gradient over ranks (and minibatches), the mean loss.
                loss = backend.average_gradients(params, losses / accumulate)
                log_now = step % t.log_every == 0 or step == total
                norms = stack.grad_norms(params) if log_now else None
                stack(params)
                for p in params:
                    p.grad = None
                smoothed.update(loss)
                stack.step(smoothed.value)
                epoch_losses.append(loss)
                window_losses.append(loss)
                window_samples += rows * backend.size
                if step % steps_per_epoch == 0:
                    stack.end_epoch(sum(epoch_losses) / len(epoch_losses))
                    epoch_losses = []
                if log_now:
                    now = time.perf_counter()
                    elapsed = max(now - window_start, 1e-9)
                    lrs = stack.lrs()
                    row = {
                        "step": step,
                        "epoch": epoch,
                        "loss": sum(window_losses) / len(window_losses),
                        "smoothed_loss": smoothed.value,
                        **{f"lr/{k}": v for k, v in lrs.items()},
                        **{f"grad_norm/{k}": v for k, v in norms.items()},
                        "time": now - start,
                        "steps_per_s": len(window_losses) / elapsed,
                        "samples_per_s": window_samples / elapsed,
                    }
                    metrics.write(row)
                    display.update(step, smoothed.value, lrs, row["steps_per_s"])
                    window_start, window_samples, window_losses = now, 0, []
        finally:
            display.close()
            metrics.close()
        end = time.perf_counter()
        wall = end - start
        in_sync = backend.params_in_sync()
        evaluation = self._evaluate()  # on every rank: the same numbers, for sweepers on each
        timed_steps, timed = (total - 1, end - after_first) if total > 1 else (1, wall)
        samples_per_rank = timed_steps * accumulate * (t.batch_size or order.rows_per_rank) / timed
        summary = {
            "final_loss": loss,
            "smoothed_loss": smoothed.value,
            "steps": total,
            "epochs": math.ceil(total / steps_per_epoch),
            "wall_time_s": wall,
            "steps_per_s": total / wall,
            "samples_per_s_per_rank": samples_per_rank,
            "samples_per_s": samples_per_rank * backend.size,
            "world_size": backend.size,
            "params_in_sync": in_sync,
            "groups": stack.describe(),
            "lr": stack.lrs(),
            "eval": evaluation,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "versions": _versions(),
        }
        if self.writes:
            save_params(self.run_dir / "params.pt")
            _write_json(self.run_dir / "summary.json", summary)
        return summary

    def _loss_and_grads(self, batch: dict[str, Any], first: bool) -> Any:
        run = self.run
        if not first:
            return run.elbo.loss_and_grads(run.model, run.guide, **batch)
        try:
            return run.elbo.loss_and_grads(run.model, run.guide, **batch)
        except PyrotrainError:
            raise
        except Exception as e:
            # The first batch is where a model meets its data: report the model's own words.
            shapes = {k: tuple(v.shape) for k, v in batch.items() if torch.is_tensor(v)}
            raise PyrotrainError(
                f"the model failed on the first batch: {type(e).__name__}: {e}",
                key="model",
                value=run.cfg.get("model", {}).get("name"),
                hint=f"The batch it was given: {shapes}. HYDRA_FULL_ERROR=1 shows the traceback",
            ) from e

    def _first_step(self, params: set[torch.Tensor]) -> None:
        """Parameters exist now: assign them to groups, check every group got some, sync ranks."""
        stack = self.run.stack
        stack.assign(params)
        unused = stack.unused_groups()
        if unused:
            g = unused[0]
            raise PyrotrainError(
                f"group '{g.name}' matches no parameter (patterns {[p.text for p in g.patterns]})",
                key=f"optim.groups.{g.name}.params",
                value=[p.text for p in g.patterns],
                hint=f"The parameters are: {', '.join(stack.param_names())}. "
                "Fix the patterns, or set optional: true on the group",
            )
        self.run.backend.broadcast_parameters(params)

    def _evaluate(self) -> dict[str, Any] | None:
        run = self.run
        evaluate = getattr(run.model, "evaluate", None)
        if evaluate is None or not run.data.eval:
            return None
        pyro.set_rng_seed(run.seed)
        with torch.no_grad():
            return evaluate(run.guide, run.data, num_samples=run.trainer.eval_num_samples)


def train(cfg: DictConfig | dict, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one training job from a composed config; return its summary.

    The Pyro param store is cleared first and holds the trained parameters afterwards. Outputs
    (metrics.jsonl, params.pt, summary.json) are written to ``run_dir`` when it is given.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    pyro.clear_param_store()
    run = build(cfg)
    return Trainer(run, Path(run_dir) if run_dir is not None else None).fit()
