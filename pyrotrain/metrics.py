"""Where a run's numbers go: metrics.jsonl on disk, and a progress bar or log lines on screen."""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from .console import screen

if TYPE_CHECKING:
    from rich.progress import Progress

    from .config import RunConfig
    from .tracking import MlflowRun


class SmoothedLoss:
    """Exponentially weighted moving average with bias correction (as Adam's moments)."""

    def __init__(self, weight: float):
        self.weight = weight
        self._avg = 0.0
        self._n = 0

    def update(self, value: float) -> float:
        if math.isfinite(value):
            self._n += 1
            self._avg = self.weight * self._avg + (1 - self.weight) * value
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"avg": self._avg, "n": self._n}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._avg, self._n = state["avg"], int(state["n"])

    @property
    def value(self) -> float:
        if self._n == 0:
            return float("nan")
        return self._avg / (1 - self.weight**self._n) if self.weight > 0 else self._avg


class MetricsSinks:
    """Where logged rows go: metrics.jsonl always, plus metrics.csv, TensorBoard event files
    (``tensorboard/``) and an MLflow run (:mod:`pyrotrain.tracking`) when asked. Without a run
    directory (other ranks, or the Python API without ``run_dir``) nothing is written."""

    def __init__(
        self,
        run_dir: Path | None,
        loggers: tuple[str, ...] = (),
        config: RunConfig | None = None,
    ):
        self._jsonl: IO[str] | None = None
        self._csv: IO[str] | None = None
        self._csv_writer: csv.DictWriter | None = None
        self._tb = None
        self._mlflow: MlflowRun | None = None
        if run_dir is None:
            return
        if config is not None and config.logger.mlflow is not None:
            from .tracking import MlflowRun

            # First: a store that cannot be used stops the run before anything is written.
            self._mlflow = MlflowRun(config.logger.mlflow, config, run_dir)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if "csv" in loggers:
            self._csv = open(run_dir / "metrics.csv", "a", newline="", encoding="utf-8")  # noqa: SIM115
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(row) + "\n")
        if self._csv is not None:
            if self._csv_writer is None:
                # Columns are fixed by the first row; groups do not change during a run.
                self._csv_writer = csv.DictWriter(
                    self._csv, fieldnames=list(row), extrasaction="ignore"
                )
                if self._csv.tell() == 0:
                    self._csv_writer.writeheader()
            self._csv_writer.writerow(row)
        if self._tb is not None:
            step = row["step"]
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
        if self._mlflow is not None:
            self._mlflow.write(row)

    def finish(self, summary: dict[str, Any]) -> None:
        """The run ended well: trackers record its summary."""
        if self._mlflow is not None:
            self._mlflow.finish(summary)
            self._mlflow = None

    def flush(self) -> None:
        for f in (self._jsonl, self._csv, self._tb):
            if f is not None:
                f.flush()

    def close(self, failed: BaseException | None = None) -> None:
        """Close the files; ``failed``: the run stopped early with it (trackers record that)."""
        for f in (self._jsonl, self._csv, self._tb):
            if f is not None:
                f.close()
        self._jsonl = self._csv = self._tb = None
        if failed is not None and self._mlflow is not None:
            self._mlflow.fail(failed)
            self._mlflow = None


WIDE_TERMINAL = 110  # columns from which the progress bar also shows lrs, speed and elapsed time


def _fmt_lrs(lrs: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in lrs.items())


class ProgressDisplay:
    """A rich progress bar on a terminal, plain lines otherwise, or nothing (``mode='none'``)."""

    def __init__(self, total: int, mode: str, console: Console | None = None, label: str = ""):
        self.console = console or screen()
        self.label = label  # "[job 3]" in a sweep, where parallel jobs share the screen
        if mode == "auto":
            mode = "bar" if self.console.is_terminal else "plain"
        self.mode = mode
        self.total = total
        self._start = time.perf_counter()
        self._bar: Progress | None = None
        if mode == "bar":
            # Only the bar needs rich.progress; plain lines and other processes go without it.
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            # What a narrow terminal keeps: step/total, loss and ETA; the lrs, speed and elapsed
            # time go first (they are in metrics.jsonl and the final lines anyway).
            wide = self.console.width >= WIDE_TERMINAL
            columns = [
                TextColumn(f"[bold]{escape(label or 'train')}"),
                BarColumn(bar_width=None if wide else 10),
                MofNCompleteColumn(),
                *([TaskProgressColumn()] if wide else []),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[shown]}"),
                *(
                    [
                        TextColumn("lr {task.fields[lr]}"),
                        TextColumn("{task.fields[speed]} steps/s"),
                        TimeElapsedColumn(),
                    ]
                    if wide
                    else []
                ),
                TextColumn("eta"),
                TimeRemainingColumn(),
            ]
            self._bar = Progress(*columns, console=self.console, transient=False)
            self._task = self._bar.add_task(
                "train", total=total, loss="-", lr="-", speed="-", shown=""
            )
            self._bar.start()

    def update(
        self,
        step: int,
        smoothed: float,
        lrs: dict[str, float],
        steps_per_s: float,
        shown: str = "",
    ) -> None:
        """``shown``: the latest evaluation metric (``eval/mae 0.83``), kept until the next."""
        if shown:
            self._shown = shown
        shown = getattr(self, "_shown", "")
        if self.mode == "bar" and self._bar is not None:
            self._bar.update(
                self._task,
                completed=step,
                loss=f"{smoothed:.4g}",
                lr=_fmt_lrs(lrs),
                speed=f"{steps_per_s:.1f}",
                shown=shown,
            )
        elif self.mode == "plain":
            elapsed = time.perf_counter() - self._start
            eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("nan")
            prefix = f"{self.label} " if self.label else ""
            print(
                f"{prefix}step {step}/{self.total}  loss {smoothed:.4g}  "
                + (f"{shown}  " if shown else "")
                + f"lr {_fmt_lrs(lrs)}  "
                f"{steps_per_s:.1f} steps/s  elapsed {elapsed:.1f}s  eta {eta:.1f}s",
                file=sys.stdout,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
