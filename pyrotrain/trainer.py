"""Build a run from a composed config and fit it: data -> model -> guide -> ELBO -> stack -> loop.

Everything a user can get wrong is checked in :func:`build` before the first step, so a bad config
fails fast with a :class:`~pyrotrain.errors.PyrotrainError` and writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import json
import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from omegaconf import DictConfig, OmegaConf
from pyro.contrib.forecast.util import MarkDCTParamMessenger
from pyro.poutine.messenger import Messenger
from rich.console import Console

from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import (
    check_compatible,
    find_resume,
    get_rng_state,
    list_checkpoints,
    prune_metrics,
    save_checkpoint,
    set_rng_state,
    shape_of,
)
from .config import (
    TrainerConfig,
    check_trainer_against_data,
    named_section,
    parse_section,
    to_plain,
)
from .data import BatchOrder, Dataset
from .distributed import build_backend, scale_learning_rates
from .errors import PyrotrainError, TrainingStopped
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
    shape: dict[str, Any] = field(default_factory=dict)  # what a checkpoint must match
    resume: tuple[Path, dict[str, Any]] | None = None  # (file, payload) to continue from


@dataclass
class LoopState:
    """The training loop's own state, saved in checkpoints."""

    step: int = 0  # optimizer steps done
    consumed: int = 0  # minibatches taken from the data order
    epoch_losses: list[float] = field(default_factory=list)
    skipped: int = 0  # non-finite steps skipped
    bad_in_a_row: int = 0


class _StopSignals:
    """SIGINT and SIGTERM ask the loop to stop after the current step (``signum`` says which);
    a second SIGINT stops at once. Handlers exist only while training, in the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        sys.stderr.write(
            f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
            "(Ctrl-C again stops at once)\n"
        )

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


class _CollectParams(Messenger):
    """The unconstrained tensor of every ``pyro.param`` a step touches: what ``SVI.step`` gets
    from ``poutine.trace(param_only=True)``, without building a trace (a dict copy per access).

    As in a trace, the last value seen under a name wins: a PyroModule setting up its parameters
    replaces the store's first tensor for a name with an ``nn.Parameter``.
    """

    def __enter__(self) -> _CollectParams:
        self._values: dict[str, torch.Tensor] = {}
        return super().__enter__()

    def _pyro_post_param(self, msg: dict) -> None:
        self._values[msg["name"]] = msg["value"]

    @property
    def params(self) -> set[torch.Tensor]:
        return {v.unconstrained() for v in self._values.values()}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


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


def build(cfg: DictConfig, run_dir: Path | None = None) -> Run:
    """Validate ``cfg`` and build every part of the run. Raises PyrotrainError on bad input.

    ``run_dir`` is where the run will write; ``trainer.resume=auto`` looks for checkpoints there.
    """
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

    pyro.set_rng_seed(seed)  # models may draw their initial weights (nn.Linear) when built
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
    shape = shape_of(to_plain(cfg, "config"), stack.layout(), backend.size)
    resume = _load_resume(trainer, run_dir, backend, shape, total_steps)
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
        shape=shape,
        resume=resume,
    )


def _load_resume(
    trainer: TrainerConfig,
    run_dir: Path | None,
    backend: Any,
    shape: dict[str, Any],
    total_steps: int,
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint ``trainer.resume`` names, read by rank 0 and sent to the others (which may
    not see its file system), after checking that it fits this config."""
    if trainer.resume is None:
        return None
    found: Any = None
    if backend.is_main:
        try:
            found = find_resume(trainer.resume, run_dir)
            if found is not None:
                check_compatible(found[1], shape, found[0])
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
        with torch_defaults(run.dtype, run.device), _StopSignals() as signals:
            return self._fit(signals)

    def _fit(self, signals: _StopSignals) -> dict[str, Any]:
        run, t, stack, backend = self.run, self.run.trainer, self.run.stack, self.run.backend
        pyro.set_rng_seed(run.seed)
        order = BatchOrder(run.data.size, t.batch_size, run.seed, backend.rank, backend.size)
        total = stack.total_steps
        accumulate = backend.backward_passes_per_step
        steps_per_epoch = _steps_per_epoch(order, backend)
        smoothed = SmoothedLoss(t.smoothing)
        state = LoopState()
        batches = iter(order)
        if run.resume is not None:
            path, payload = run.resume
            state = LoopState(**payload["loop"])
            smoothed.load_state_dict(payload["smoothed"])
            batches = order.iter_from(state.consumed)
            first_batch = next(batches)
            batches = itertools.chain([first_batch], batches)
            self._restore(payload, first_batch[1])
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if run.resume is not None:  # rows after the checkpoint are about to be redone
                prune_metrics(self.run_dir / "metrics.jsonl", state.step)
        metrics = MetricsSinks(self.run_dir if self.writes else None, (run.logger,))
        display = ProgressDisplay(total, t.progress if backend.is_main else "none", self.console)
        first = state.step + 1
        last_params: set[torch.Tensor] = set()
        window_start, window_samples, window_steps, window_losses = time.perf_counter(), 0, 0, []
        start = after_first = time.perf_counter()
        loss = float("nan")
        try:
            for step in range(first, total + 1):
                if step == first + 1:  # throughput leaves out the first step's one-time setup
                    after_first = time.perf_counter()
                params: set[torch.Tensor] = set()
                losses, rows, norms, invalid = 0.0, 0, {}, None
                for _ in range(accumulate):  # gradients add up in p.grad
                    epoch, index = next(batches)
                    rows += len(index)
                    if invalid is not None:
                        continue  # the step is lost; keep the data order in step
                    batch = self._batch(index)
                    try:
                        with _CollectParams() as capture:
                            losses += float(self._loss_and_grads(batch, first=step == first))
                    except ValueError as e:
                        # Pyro's argument checks meet NaN before the loss does
                        if step == first or "found invalid values" not in str(e):
                            raise
                        invalid = str(e).splitlines()[0]
                        continue
                    params |= capture.params
                if invalid is not None:
                    params, losses = last_params, float("nan")
                    for p in params:
                        p.grad = None
                if step == first:
                    self._first_step(params)
                last_params = params
                # One collective: the mean gradient over ranks (and minibatches), the mean loss,
                # and whether any rank was asked to stop.
                loss, stop = backend.average_gradients(params, losses / accumulate, signals.signum)
                bad = stack.nonfinite_groups(params)
                if not math.isfinite(loss) or bad:
                    for p in params:
                        p.grad = None
                    self._non_finite(step, loss, bad, state, invalid)
                else:
                    state.bad_in_a_row = 0
                    if step % t.log_every == 0 or step == total:
                        norms = stack.grad_norms(params)
                    stack(params)
                    for p in params:
                        p.grad = None
                    smoothed.update(loss)
                    stack.step(smoothed.value)
                    state.epoch_losses.append(loss)
                    window_losses.append(loss)
                state.step, state.consumed = step, state.consumed + accumulate
                window_samples += rows * backend.size
                window_steps += 1
                if step % steps_per_epoch == 0:
                    stack.end_epoch(_mean(state.epoch_losses))
                    state.epoch_losses = []
                if step % t.log_every == 0 or step == total:
                    now = time.perf_counter()
                    elapsed = max(now - window_start, 1e-9)
                    lrs = stack.lrs()
                    row = {
                        "step": step,
                        "epoch": epoch,
                        "loss": _mean(window_losses) if window_losses else float("nan"),
                        "smoothed_loss": smoothed.value,
                        **{f"lr/{k}": v for k, v in lrs.items()},
                        **{f"grad_norm/{k}": v for k, v in norms.items()},
                        "time": now - start,
                        "steps_per_s": window_steps / elapsed,
                        "samples_per_s": window_samples / elapsed,
                    }
                    metrics.write(row)
                    display.update(step, smoothed.value, lrs, row["steps_per_s"])
                    window_start, window_samples, window_steps, window_losses = now, 0, 0, []
                if stop and step < total:  # at the last step, finishing is quicker
                    self._stop(stop, signals.signum, state, smoothed, metrics)
                if (t.checkpoint_every and step % t.checkpoint_every == 0) or step == total:
                    self._checkpoint(state, smoothed, metrics)
        finally:
            display.close()
            metrics.close()
        end = time.perf_counter()
        wall = end - start
        in_sync = backend.params_in_sync()
        evaluation = self._evaluate()  # on every rank: the same numbers, for sweepers on each
        done = total - first + 1
        timed_steps, timed = (done - 1, end - after_first) if done > 1 else (1, wall)
        samples_per_rank = timed_steps * accumulate * (t.batch_size or order.rows_per_rank) / timed
        summary = {
            "final_loss": loss,
            "smoothed_loss": smoothed.value,
            "steps": total,
            "epochs": math.ceil(total / steps_per_epoch),
            "resumed_from_step": first - 1 if run.resume is not None else None,
            "skipped_steps": state.skipped,
            "wall_time_s": wall,
            "steps_per_s": done / wall,
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

    # -- checkpoints, resume, stopping ----------------------------------------------------------

    def _checkpoint(self, state: LoopState, smoothed: SmoothedLoss, metrics: MetricsSinks) -> None:
        """Every rank hands in its RNG state; rank 0 writes the checkpoint."""
        run = self.run
        rng = run.backend.gather_object(get_rng_state())
        if not self.writes:
            return
        metrics.flush()
        payload = {
            "format": CHECKPOINT_FORMAT,
            "step": state.step,
            "loop": dataclasses.asdict(state),
            "smoothed": smoothed.state_dict(),
            "param_store": pyro.get_param_store().get_state(),
            "optim": run.stack.state_dict(),
            "optimizer_args": run.stack.optimizer_args(),
            "rng": rng,
            "shape": run.shape,
            "config": to_plain(run.cfg, "config"),
            "versions": _versions(),
        }
        save_checkpoint(payload, self.run_dir, run.trainer.keep_checkpoints)

    def _restore(self, payload: dict[str, Any], index: torch.Tensor) -> None:
        """Load a checkpoint's state into the param store, the stack and the RNGs.

        Models and guides create their parameters lazily (autoguides drawing random numbers as
        they do, ``pyro.module`` registering the module's own tensors), so one ELBO evaluation on
        the first batch creates them as in a fresh run; the saved values are then copied into
        those very tensors, and the optimizer state and random number generators restored.
        """
        run = self.run
        with _CollectParams() as capture, torch.no_grad():
            run.elbo.loss(run.model, run.guide, **self._batch(index))
        store = pyro.get_param_store()
        current = dict(store.named_parameters())
        saved = payload["param_store"]
        with torch.no_grad():
            for name, value in saved["params"].items():
                if name in current:
                    if current[name].shape != value.shape:
                        raise PyrotrainError(
                            f"parameter '{name}' has shape {tuple(current[name].shape)} in this "
                            f"run and {tuple(value.shape)} in the checkpoint",
                            key="trainer.resume",
                            value=str(run.resume[0]),
                        )
                    current[name].copy_(value)
        later = {n: v for n, v in saved["params"].items() if n not in current}
        if later:  # created after the first step in the saved run: they come from the store
            store.set_state(
                {"params": later, "constraints": {n: saved["constraints"][n] for n in later}}
            )
        run.stack.assign(capture.params)
        run.stack.load_state_dict(payload["optim"])
        changed = run.stack.apply_changed_args(payload["optimizer_args"])
        if changed and run.backend.is_main:
            for group, keys in changed.items():
                for key, (was, now) in keys.items():
                    self.console.print(f"resume: group {group} {key} {was} -> {now}")
        set_rng_state(payload["rng"][run.backend.rank])

    def _non_finite(
        self, step: int, loss: float, bad: list[str], state: LoopState, invalid: str | None
    ) -> None:
        """Apply ``trainer.nan_policy`` to a step whose loss or gradients are not finite
        (``invalid``: a distribution refused a non-finite argument on this rank)."""
        t = self.run.trainer
        if bad:
            where = f"the gradient of group {', '.join(repr(b) for b in bad)}"
        elif invalid:
            where = f"the loss (a distribution was given non-finite values: {invalid})"
        else:
            where = f"the loss ({loss})"
        state.skipped += 1
        state.bad_in_a_row += 1
        if t.nan_policy == "stop" or state.bad_in_a_row > t.max_bad_steps:
            saved = list_checkpoints(self.run_dir) if self.run_dir else []
            last = f"The last good checkpoint is {saved[0]}" if saved else "No checkpoint was saved"
            why = (
                f"after {t.max_bad_steps} non-finite steps in a row"
                if t.nan_policy != "stop"
                else "(trainer.nan_policy=stop)"
            )
            raise TrainingStopped(
                f"training stopped at step {step}: {where} is not finite {why}",
                exit_code=1,
                hint=f"{last}. Lower the learning rate, add clipping, or set "
                "trainer.nan_policy=skip or reduce_lr, and continue from it with "
                f"trainer.resume={self.run_dir or '<run dir>'}",
            )
        if t.nan_policy == "reduce_lr":
            groups = bad or list(self.run.stack.lrs())
            self.run.stack.scale_lr(groups, t.nan_lr_factor)
        if self.run.backend.is_main:
            action = "skipped" if t.nan_policy == "skip" else f"skipped, lr x{t.nan_lr_factor}"
            self.console.print(f"[yellow]step {step}: {where} is not finite; {action}[/]")

    def _stop(
        self,
        stop: int,
        own: int,
        state: LoopState,
        smoothed: SmoothedLoss,
        metrics: MetricsSinks,
    ) -> None:
        """A rank got SIGINT or SIGTERM: every rank ends after the same step, with a checkpoint."""
        signum = own or (signal.SIGTERM if stop >= signal.SIGTERM else signal.SIGINT)
        self._checkpoint(state, smoothed, metrics)
        name = signal.Signals(signum).name
        where = f" and saved a checkpoint in {self.run_dir}" if self.writes else ""
        raise TrainingStopped(
            f"{name}: training stopped after step {state.step}{where}",
            exit_code=128 + signum,
            hint="Continue with the same command plus "
            f"trainer.resume={self.run_dir or '<run dir>'}",
        )

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
    run_dir = Path(run_dir) if run_dir is not None else None
    run = build(cfg, run_dir)
    return Trainer(run, run_dir).fit()
