"""What a run is judged by: the model's held-out evaluation during and after training, the value
a sweep reads from the summary (``trainer.objective``), and ``trainer.early_stopping``'s monitor
with the best parameters it keeps for ``checkpoints/best.pt``.

Every evaluation draws from the run's seed and puts the training's random state back, so a run
that evaluates trains exactly as one that does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from .build import Run
from .errors import PyrotrainError
from .rng import rng_kept


@dataclass
class EarlyStoppingState:
    """``trainer.early_stopping``'s monitor: the best value and its step, the checks since it
    improved, and the step it stopped the run at. The loop holds it and saves it in checkpoints,
    so a resumed run stops where a straight one does."""

    best_value: float | None = None
    best_step: int | None = None
    bad_checks: int = 0
    stopped_early_at: int | None = None


class Evaluation:
    """A run's evaluations and its early-stopping monitor (one per Trainer).

    :param run: the built run.
    :param writes: whether this process writes the run's outputs (rank 0 with a run directory):
        only then are the best parameters kept.
    """

    def __init__(self, run: Run, writes: bool):
        self.run = run
        self.settings = run.config.trainer
        self.writes = writes
        #: the monitor's best parameters since the last checkpoint, not yet in best.pt
        self.best_state: dict[str, Any] | None = None

    def best(self, state: EarlyStoppingState) -> dict[str, Any] | None:
        """The summary's ``best``: the monitor, its best value and that value's step."""
        monitor = self.settings.early_stopping.monitor
        if monitor is None or state.best_step is None:
            return None
        return {"monitor": monitor, "value": state.best_value, "step": state.best_step}

    def check_objective(self) -> None:
        """An ``eval.<metric>`` objective must name a metric this run's evaluation produces:
        checked once after the first step (the parameters exist then), not after the last. The
        evaluation draws from its own seed; the training's random state is put back."""
        objective = self.settings.objective
        if not objective.startswith("eval."):
            return
        with rng_kept():
            evaluation = self.final()
        objective_value({"eval": evaluation}, objective)

    def final(self) -> dict[str, Any] | None:
        """The model's ``evaluate`` on the held-out rows, from the run's seed (None without
        one): what the summary's ``eval`` holds."""
        run = self.run
        evaluate = getattr(run.model, "evaluate", None)
        if evaluate is None or not run.data.eval:
            return None
        pyro.set_rng_seed(run.config.seed)
        with torch.no_grad():
            return evaluate(run.guide, run.data, num_samples=self.settings.eval_num_samples)

    def during_training(self) -> dict[str, float]:
        """``eval/METRIC`` of the model's evaluate now, leaving the training's RNG as it was (so
        that evaluating changes nothing a run without it would do)."""
        with rng_kept():
            result = self.final() or {}
        # Floats only: counts (n, horizon) are not metrics.
        return {f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}

    def shown(self, row: dict[str, Any]) -> str:
        """The evaluation metric the progress display shows: the monitored one, else the first."""
        monitor = self.settings.early_stopping.monitor
        keys = [k for k in row if k.startswith("eval/") and isinstance(row[k], float)]
        if monitor in row and monitor != "smoothed_loss":
            keys = [monitor]
        return f"{keys[0]} {row[keys[0]]:.4g}" if keys else ""

    def monitor(self, step: int, row: dict[str, Any], state: EarlyStoppingState) -> bool:
        """Track trainer.early_stopping's monitor on a logging step in ``state``; True: stop now.
        Rank 0 decides (every rank computes the same values) and the others follow."""
        rule = self.settings.early_stopping
        if rule.monitor is None or rule.monitor not in row and not rule.monitor.startswith("eval/"):
            return False
        if rule.monitor not in row:
            if not any(k.startswith("eval/") for k in row):
                return False  # no evaluation on this step
            raise PyrotrainError(
                "the model's evaluate returns no such metric",
                key="trainer.early_stopping.monitor",
                value=rule.monitor,
                choices=[k for k in row if k.startswith("eval/")] + ["smoothed_loss"],
            )
        value = float(row[rule.monitor])
        if math.isfinite(value) and rule.improves(value, state.best_value):
            state.best_value, state.best_step, state.bad_checks = value, step, 0
            if self.writes:
                store = pyro.get_param_store().get_state()
                self.best_state = {
                    "params": {k: v.detach().clone() for k, v in store["params"].items()},
                    "constraints": dict(store["constraints"]),
                }
        else:
            state.bad_checks += 1
        stop = state.bad_checks >= rule.patience
        return bool(self.run.backend.broadcast_object(stop))


def objective_value(summary: dict[str, Any], path: str) -> float:
    """The summary's value at a dotted ``path`` (``trainer.objective``, e.g. ``eval.rmse``): what
    a run returns to a sweeper. ``best`` is the early-stopping monitor's best value (NaN when it
    never had a finite one)."""
    if path == "best":
        best = summary.get("best")
        return float(best["value"]) if best else float("nan")
    value: Any = summary
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            metrics = summary.get("eval") or {}
            choices = ["smoothed_loss", "final_loss"] + [f"eval.{k}" for k in metrics]
            why = (
                "this run's evaluation has no such metric"
                if metrics
                else "this run has no held-out evaluation (the model has no evaluate() or the "
                "data no held-out rows)"
            )
            raise PyrotrainError(why, key="trainer.objective", value=path, choices=choices)
        value = value[part]
    return float(value)
