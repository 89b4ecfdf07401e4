"""The SVI loop: fit a built :class:`~pyrotrain.build.Run` and write its outputs.

Per step: this rank's minibatches -> ``elbo.loss_and_grads`` (parameters appear lazily) ->
``backend.reduce`` (one collective carrying the gradients, the loss and the stop flag; a no-op in
one process) -> ``stack`` (per group: clip -> optimizer -> schedule). Metrics, gradient norms and
progress happen on logging steps only; checkpoints on checkpoint steps (rank 0 writes).
"""

from __future__ import annotations

import itertools
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from rich.markup import escape

from .build import Run, build, torch_defaults
from .calls import Call
from .checkpoint import (
    best_payload,
    from_loop_entry,
    list_checkpoints,
    loop_entry,
    prune_metrics,
    restore,
    save_best,
    save_checkpoint,
    step_payload,
    versions,
)
from .console import screen
from .errors import PyrotrainError, TrainingStopped
from .evaluation import EarlyStoppingState, Evaluation
from .io import save_params, write_json
from .metrics import MetricsSinks, ProgressDisplay, SmoothedLoss, Window
from .optim.rows import TouchedRows, densify
from .params import CollectParams
from .rng import get_rng_state
from .signals import StopSignals
from .targets import describe_exception


@dataclass
class LoopState:
    """The training loop's own state, saved in checkpoints."""

    step: int = 0  # optimizer steps done
    consumed: int = 0  # minibatches taken from the data order
    epoch_losses: list[float] = field(default_factory=list)
    skipped: int = 0  # non-finite steps skipped
    bad_in_a_row: int = 0


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def batch_of(run: Run, index: torch.Tensor) -> Call:
    """The training rows ``index`` as the model's arguments (see :mod:`pyrotrain.calls`)."""
    assert run.binding is not None  # build() binds every run
    return run.binding(index)


class Trainer:
    """Runs the SVI loop of a built :class:`Run` and writes its outputs to ``run_dir``."""

    def __init__(
        self,
        run: Run,
        run_dir: Path | None = None,
        console: Any = None,
        label: str = "",
        on_log: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.run = run
        # Called with every metrics row (a sweeper's reporter; whatever it raises ends the run).
        self.on_log = on_log
        self.writes = run_dir is not None and run.backend.is_main
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.console = console if console is not None else screen()
        self.label = label
        self._tag = escape(f"{label} ") if label else ""  # before the loop's own messages
        self.settings = run.config.trainer
        self.accumulate = self.settings.accumulate_grad_batches
        self.state = LoopState()
        self.early = EarlyStoppingState()
        self.smoothed = SmoothedLoss(self.settings.smoothing)
        self._last_params: set[torch.Tensor] = set()
        self._epoch_of_last_batch = 0
        self.evaluation = Evaluation(run, self.writes)

    def fit(self) -> dict[str, Any]:
        """Train to the run's last step; return the summary (also written as summary.json)."""
        run = self.run
        with torch_defaults(run.dtype, run.device), StopSignals() as signals:
            return self._fit(signals)

    def _fit(self, signals: StopSignals) -> dict[str, Any]:
        run, settings = self.run, self.settings
        pyro.set_rng_seed(run.config.seed)
        batches = self._start()
        total, first = run.total_steps, self.state.step + 1
        metrics = MetricsSinks(
            self.run_dir if self.writes else None, run.config.logger.names, run.config
        )
        display = ProgressDisplay(
            total, settings.progress if run.backend.is_main else "none", self.console, self.label
        )
        window = Window(time.perf_counter())
        start = after_first = window.start
        loss = float("nan")
        try:
            for step in range(first, total + 1):
                if step == first + 1:  # throughput leaves out the first step's one-time setup
                    after_first = time.perf_counter()
                    window.start, window.steps, window.samples = after_first, 0, 0
                evals = settings.eval_every is not None and (
                    step % settings.eval_every == 0 or step == total
                )
                logs = step % settings.log_every == 0 or step == total or evals
                loss, rows, norms, stop = self._step(step, first, logs, batches, signals, window)
                if step == first:
                    self.evaluation.check_objective()
                self.state.step, self.state.consumed = step, self.state.consumed + self.accumulate
                window.samples += rows * run.backend.size
                window.steps += 1
                if step % run.steps_per_epoch == 0:
                    run.stack.end_epoch(_mean(self.state.epoch_losses))
                    self.state.epoch_losses = []
                early = False
                if logs:
                    lrs = run.stack.lrs()
                    row = window.row(
                        step, self._epoch_of_last_batch, self.smoothed.value, lrs, norms, start
                    )
                    if evals:
                        row.update(self.evaluation.during_training())
                    metrics.write(row)
                    shown = self.evaluation.shown(row)
                    display.update(step, self.smoothed.value, lrs, row["steps_per_s"], shown)
                    window = Window(time.perf_counter())
                    if self.on_log is not None:
                        self.on_log(row)
                    early = self.evaluation.monitor(step, row, self.early)
                if stop and step < total:  # at the last step, finishing is quicker
                    self._stop(stop, signals.signum, metrics)
                if early:
                    self.early.stopped_early_at = step
                if (
                    (settings.checkpoint_every and step % settings.checkpoint_every == 0)
                    or step == total
                    or early
                ):
                    self._checkpoint(metrics)
                if early:
                    break
        except BaseException as exc:
            display.close()
            metrics.close(failed=exc)
            raise
        display.close()
        metrics.close()
        end = time.perf_counter()
        summary = self._summary(loss, first, start, after_first, end)
        if self.writes:
            assert self.run_dir is not None
            save_params(self.run_dir / "params.pt")
            write_json(self.run_dir / "summary.json", summary)
        metrics.finish(summary)
        return summary

    # -- the parts of a run -----------------------------------------------------------------------

    def _start(self) -> Iterator[tuple[int, torch.Tensor]]:
        """This rank's minibatches from where the run starts (restoring a checkpoint first), and
        the run directory made ready."""
        run = self.run
        batches = iter(run.order)
        if run.resume is not None:
            _, payload = run.resume
            self.state = from_loop_entry(LoopState, payload["loop"])
            self.early = from_loop_entry(EarlyStoppingState, payload["loop"])
            self.smoothed.load_state_dict(payload["smoothed"])
            was = payload["shape"].get("world_size", run.backend.size)
            if was != run.backend.size:
                self.state.consumed = run.order.resharded(self.state.consumed, was)
                if run.backend.is_main:
                    self.console.print(
                        f"resume: {was} ranks -> {run.backend.size}: the rows are re-sharded "
                        "from this epoch on"
                    )
            batches = run.order.iter_from(self.state.consumed)
            first_batch = next(batches)
            batches = itertools.chain([first_batch], batches)
            self._restore(payload, first_batch[1])
        if self.writes:
            assert self.run_dir is not None
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # Rows after the checkpoint (all rows, when auto found none) are about to be redone.
            if self.settings.resume is not None:
                prune_metrics(self.run_dir / "metrics.jsonl", self.state.step)
        return batches

    def _step(
        self,
        step: int,
        first: int,
        logs: bool,
        batches: Iterator[tuple[int, torch.Tensor]],
        signals: StopSignals,
        window: Window,
    ) -> tuple[float, int, dict[str, float], int]:
        """One optimizer step; returns the step's loss (the ranks' mean), the rows it saw on this
        rank, the gradient norms (on logging steps) and the ranks' stop code."""
        run, stack = self.run, self.run.stack
        params, losses, rows, invalid = self._gradients(step == first, batches)
        if step == first:
            self._first_step(params)
        self._last_params = params
        if self.accumulate > 1:  # the minibatches' mean, as one batch of all their rows
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                torch._foreach_div_(grads, self.accumulate)
        if run.backend.size > 1:  # gradients are summed over ranks dense
            densify(params)
        loss, stop = run.backend.reduce(params, losses / self.accumulate, signals.signum)
        norms: dict[str, float] = {}
        bad = stack.nonfinite_groups(params)
        if not math.isfinite(loss) or bad:
            for p in params:
                p.grad = None
            self._non_finite(step, loss, bad, invalid)
            return loss, rows, norms, stop
        self.state.bad_in_a_row = 0
        if logs:  # gradient norms only for the metrics row
            norms = stack.grad_norms(params)
        stack(params)
        for p in params:
            p.grad = None
        self.smoothed.update(loss)
        stack.step(self.smoothed.value)
        self.state.epoch_losses.append(loss)
        window.losses.append(loss)
        return loss, rows, norms, stop

    def _gradients(
        self, first: bool, batches: Iterator[tuple[int, torch.Tensor]]
    ) -> tuple[set[torch.Tensor], float, int, str | None]:
        """Backward passes over this step's minibatches; gradients add up in ``p.grad``.

        Returns the parameters touched, the summed loss, the rows seen, and, where a distribution
        refused a non-finite argument (how NaN usually shows in Pyro), its message: the step is
        then lost, with the data order kept in step."""
        params: set[torch.Tensor] = set()
        touched = TouchedRows()
        losses, rows, invalid = 0.0, 0, None
        for _ in range(self.accumulate):
            self._epoch_of_last_batch, index = next(batches)
            rows += len(index)
            if invalid is not None:
                continue
            try:
                with CollectParams() as capture:
                    losses += float(self._loss_and_grads(self._batch(index), first))
            except ValueError as e:
                if first or "found invalid values" not in str(e):
                    raise
                invalid = str(e).splitlines()[0]
                continue
            params |= capture.params
            touched.update(capture.rows)
        touched.publish()  # the rows of every minibatch, for sparse groups
        if invalid is not None:
            params, losses = self._last_params, float("nan")
            for p in params:
                p.grad = None
        return params, losses, rows, invalid

    def _batch(self, index: torch.Tensor) -> Call:
        return batch_of(self.run, index)

    def _loss_and_grads(self, batch: Call, first: bool) -> Any:
        run = self.run
        if not first:
            return batch.apply(run.elbo.loss_and_grads, run.model, run.guide)
        try:
            return batch.apply(run.elbo.loss_and_grads, run.model, run.guide)
        except PyrotrainError:
            raise
        except Exception as e:
            # The first batch is where a model meets its data: report the model's own words.
            shapes = batch.shapes()
            raise PyrotrainError(
                f"the model failed on the first batch: {describe_exception(e)}",
                key="model",
                value=run.config.model.name,
                hint=f"The batch it was given: {shapes}. HYDRA_FULL_ERROR=1 shows the traceback",
            ) from e

    def _first_step(self, params: set[torch.Tensor]) -> None:
        """Parameters exist now: assign them to groups, check every group got some, sync ranks."""
        stack = self.run.stack
        if not params:
            raise PyrotrainError(
                "the first step created no Pyro parameter: the model and guide have nothing to "
                "train (a model without latent sample sites and parameters, or an ELBO that drew "
                "no particle)",
                key="model",
                value=self.run.config.model.name,
                hint="Check that the model calls pyro.sample for its latent variables or "
                "pyro.param, and that elbo.num_particles is at least 1",
            )
        stack.assign(params)
        unused = stack.unused_groups()
        if unused:
            g = unused[0]
            raise PyrotrainError(
                f"group '{g.name}' matches no parameter (patterns {[p.text for p in g.patterns]})",
                key=f"{g.key}.params",
                value=[p.text for p in g.patterns],
                hint=f"The parameters are: {', '.join(stack.param_names())}. "
                "Fix the patterns, or set optional: true on the group",
            )
        self.run.backend.broadcast_parameters(params)

    def _summary(
        self, loss: float, first: int, start: float, after_first: float, end: float
    ) -> dict[str, Any]:
        run, backend = self.run, self.run.backend
        wall = end - start
        in_sync = backend.params_in_sync()
        # on every rank: the same numbers, for sweepers on each
        evaluation = self.evaluation.final()
        done = self.state.step - first + 1
        timed_steps, timed = (done - 1, end - after_first) if done > 1 else (1, wall)
        rows_per_step = run.order.batch_size or run.order.rows_per_rank
        samples_per_rank = timed_steps * self.accumulate * rows_per_step / timed
        best = self.evaluation.best(self.early)
        finite = math.isfinite(self.smoothed.value)
        return {
            # Every step skipped as non-finite (trainer.nan_policy skip or reduce_lr) is no result.
            "status": "finished" if finite else "diverged",
            **(
                {}
                if finite
                else {"reason": f"no step of the {self.state.skipped} had a finite loss"}
            ),
            "final_loss": loss,
            "smoothed_loss": self.smoothed.value,
            "steps": self.state.step,
            "stopped_early_at": self.early.stopped_early_at,
            "best": best,
            "epochs": math.ceil(self.state.step / run.steps_per_epoch),
            "resumed_from_step": first - 1 if run.resume is not None else None,
            "skipped_steps": self.state.skipped,
            "wall_time_s": wall,
            "steps_per_s": timed_steps / timed,
            "samples_per_s_per_rank": samples_per_rank,
            "samples_per_s": samples_per_rank * backend.size,
            "world_size": backend.size,
            "params_in_sync": in_sync,
            "groups": run.stack.describe(),
            "lr": run.stack.lrs(),
            "eval": evaluation,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "versions": versions(),
        }

    # -- checkpoints, resume, stopping ----------------------------------------------------------

    def _checkpoint(self, metrics: MetricsSinks) -> None:
        """Every rank hands in its RNG state; rank 0 writes the checkpoint."""
        run = self.run
        rng = run.backend.gather_object(get_rng_state())
        if not self.writes:
            return
        assert self.run_dir is not None
        metrics.flush()
        if self.evaluation.best_state is not None:  # before the step's checkpoint, naming it
            best = best_payload(
                step=self.early.best_step,
                monitor=self.settings.early_stopping.monitor,
                value=self.early.best_value,
                param_store=self.evaluation.best_state,
                config=run.config.plain,
            )
            save_best(best, self.run_dir)
            self.evaluation.best_state = None
        payload = step_payload(
            step=self.state.step,
            loop=loop_entry(self.state, self.early),
            smoothed=self.smoothed.state_dict(),
            optim=run.stack.state_dict(),
            optimizer_args=run.stack.optimizer_args(),
            rng=rng,
            shape=run.shape,
            config=run.config.plain,
        )
        save_checkpoint(payload, self.run_dir, self.settings.keep_checkpoints)

    def _restore(self, payload: dict[str, Any], index: torch.Tensor) -> None:
        """Load a checkpoint's state (:func:`pyrotrain.checkpoint.restore`) on the first batch."""
        changed = restore(self.run, payload, batch_of(self.run, index))
        if changed and self.run.backend.is_main:
            for group, keys in changed.items():
                for key, (was, now) in keys.items():
                    self.console.print(f"{self._tag}resume: group {group} {key} {was} -> {now}")

    def _non_finite(self, step: int, loss: float, bad: list[str], invalid: str | None) -> None:
        """Apply ``trainer.nan_policy`` to a step whose loss or gradients are not finite
        (``invalid``: a distribution refused a non-finite argument on this rank)."""
        settings, state = self.settings, self.state
        if bad:
            where = f"the gradient of group {', '.join(repr(b) for b in bad)}"
        elif invalid:
            where = f"the loss (a distribution was given non-finite values: {invalid})"
        else:
            where = f"the loss ({loss})"
        state.skipped += 1
        state.bad_in_a_row += 1
        if settings.nan_policy == "stop" or state.bad_in_a_row > settings.max_bad_steps:
            saved = list_checkpoints(self.run_dir) if self.run_dir else []
            why = (
                f"after {settings.max_bad_steps} non-finite steps in a row"
                if settings.nan_policy != "stop"
                else "(trainer.nan_policy=stop)"
            )
            fixes = (
                "Lower the learning rate, add clipping, or set trainer.nan_policy=skip or reduce_lr"
            )
            if saved:  # only a saved checkpoint can be continued from
                hint = (
                    f"The last good checkpoint is {saved[0]}. {fixes}, and continue from it with "
                    f"trainer.resume={self.run_dir}"
                )
            else:
                hint = f"No checkpoint was saved. {fixes}, and start again"
            raise TrainingStopped(
                f"training stopped at step {step}: {where} is not finite {why}",
                exit_code=1,
                hint=hint,
            )
        if settings.nan_policy == "reduce_lr":
            groups = bad or list(self.run.stack.lrs())
            self.run.stack.scale_lr(groups, settings.nan_lr_factor)
        if self.run.backend.is_main:
            action = (
                "skipped"
                if settings.nan_policy == "skip"
                else f"skipped, lr x{settings.nan_lr_factor}"
            )
            message = f"step {step}: {where} is not finite; {action}"
            self.console.print(f"{self._tag}[yellow]{escape(message)}[/]")

    def _stop(self, stop: int, own: int, metrics: MetricsSinks) -> None:
        """A rank got SIGINT or SIGTERM: every rank ends after the same step, with a checkpoint."""
        signum = own or stop  # backend.reduce decodes the ranks' signals
        self._checkpoint(metrics)
        name = signal.Signals(signum).name
        where = f" and saved a checkpoint in {self.run_dir}" if self.writes else ""
        raise TrainingStopped(
            f"{name}: training stopped after step {self.state.step}{where}",
            exit_code=128 + signum,
            hint="Continue with the same command plus "
            f"trainer.resume={self.run_dir or '<run dir>'}",
        )


def train(
    cfg: Any,
    run_dir: str | Path | None = None,
    label: str = "",
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one training job from a composed config; return its summary.

    The Pyro param store is cleared first and holds the trained parameters afterwards. Outputs
    (metrics.jsonl, params.pt, summary.json) are written to ``run_dir`` when it is given.
    ``label`` prefixes the progress lines (``[job 3]`` in a sweep); ``on_log`` is called with
    every metrics row.
    """
    pyro.clear_param_store()
    out = Path(run_dir) if run_dir is not None else None
    return Trainer(build(cfg, out), out, label=label, on_log=on_log).fit()
