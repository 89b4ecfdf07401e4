"""The end of a ``--multirun`` sweep: a ranked table of its jobs, as CSV, JSON and on screen.

Hydra calls :class:`SweepSummary` (registered in conf/config.yaml under ``hydra.callbacks``) once
every job has finished. It reads each job's summary.json, so it works the same for the basic
launcher, joblib and Optuna.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console

from .distributed import is_main_process
from .plots import job_labels, plot_run, plot_sweep, sweep_jobs


def collect(sweep_dir: Path, by_best: str | None = None) -> list[dict[str, Any]]:
    """One row per finished job, best first: the lowest smoothed final loss, or with
    ``by_best`` (``trainer.objective=best``: the monitor's mode, ``min`` or ``max``) the best
    monitored value."""
    rows = []
    jobs = sweep_jobs(sweep_dir)
    labels = job_labels(jobs)
    for job in jobs:
        path = job / "summary.json"
        if not path.exists():
            continue
        s = json.loads(path.read_text(encoding="utf-8"))
        rows.append(
            {
                "job": job.name,
                "overrides": labels[job],
                "smoothed_loss": s.get("smoothed_loss"),
                "final_loss": s.get("final_loss"),
                "eval": s.get("eval") or {},
                "steps_per_s": s.get("steps_per_s"),
                "steps": s.get("steps"),
                "best": (s.get("best") or {}).get("value"),
                "run_dir": str(job),
            }
        )

    def key(row):
        v = row["smoothed_loss"] if by_best is None else row["best"]
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            return math.inf
        return -v if by_best == "max" else v

    rows.sort(key=key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    eval_keys = sorted({k for r in rows for k in r["eval"]})
    (sweep_dir / "sweep_summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    columns = [
        "rank",
        "job",
        "overrides",
        "smoothed_loss",
        "final_loss",
        "best",
        *[f"eval.{k}" for k in eval_keys],
        "steps_per_s",
        "steps",
        "run_dir",
    ]
    with open(sweep_dir / "sweep_summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            flat = {k: v for k, v in r.items() if k != "eval"}
            flat.update({f"eval.{k}": r["eval"].get(k) for k in eval_keys})
            writer.writerow(flat)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def print_table(rows: list[dict[str, Any]], sweep_dir: Path, console: Console) -> None:
    """The ranking on screen; sweep_summary.csv has every column."""
    # Hydra builds this module's callback for every run, sweeps or not: import rich.table here.
    from rich.table import Table

    eval_keys = sorted({k for r in rows for k in r["eval"] if isinstance(r["eval"][k], float)})
    table = Table(title=f"Sweep {sweep_dir} ({len(rows)} jobs, best first)", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("job: overrides", overflow="fold", min_width=16, ratio=1)
    by_best = any(r.get("best") is not None for r in rows)
    for col in ["smoothed loss", *(["best"] if by_best else []), *eval_keys, "steps/s"]:
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            str(r["rank"]),
            f"{r['job']}: {r['overrides']}",
            _fmt(r["smoothed_loss"]),
            *([_fmt(r.get("best"))] if by_best else []),
            *[_fmt(r["eval"].get(k)) for k in eval_keys],
            _fmt(r["steps_per_s"]),
        )
    console.print(table)


class SweepSummary(Callback):
    """Hydra callback: rank the jobs, write sweep_summary.csv/.json and comparison.png."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_main_process():  # under a launcher every rank runs the sweep
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        trainer = config.get("trainer") or {}
        by_best = None
        if trainer.get("objective") == "best":
            by_best = (trainer.get("early_stopping") or {}).get("mode", "min")
        rows = collect(sweep_dir, by_best)
        if not rows:
            return
        write_summary(sweep_dir, rows)
        for job in sweep_jobs(sweep_dir):
            if not (job / "loss.png").exists():
                plot_run(job)
        plot_sweep(sweep_dir)
        console = Console()
        print_table(rows, sweep_dir, console)
        console.print(
            f"sweep summary: {sweep_dir / 'sweep_summary.csv'}  "
            f"plot: {sweep_dir / 'comparison.png'}"
        )
