"""A ``--multirun`` sweep from pyrotrain's side: its jobs checked before the first one runs, a job
that diverges or fails recorded and passed over, and at the end a ranked table of the jobs as CSV,
JSON and on screen.

:class:`SweepSummary` is a Hydra callback (registered in conf/config.yaml under
``hydra.callbacks``). It reads each job's summary.json, so it works the same for the basic
launcher, joblib and Optuna. A sweep exits 1 when every job diverged or failed, else 0.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from .console import exit_with, screen
from .distributed import is_main_process
from .errors import PyrotrainError
from .io import write_json, write_text
from .plots import job_labels, plot_run, plot_sweep, sweep_jobs

FINISHED = "finished"


def record_failure(run_dir: Path, status: str, reason: str, detail: str | None = None) -> Path:
    """Mark a job as ``status`` (diverged, failed) in its summary.json, with the reason; the
    traceback of a failure, when there is one, goes to error.txt. Returns summary.json's path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if detail:
        write_text(run_dir / "error.txt", detail)
    path = run_dir / "summary.json"
    write_json(
        path,
        {"status": status, "reason": reason, "smoothed_loss": None, "final_loss": None},
    )
    return path


def collect(sweep_dir: Path, by_best: str | None = None) -> list[dict[str, Any]]:
    """One row per job: finished jobs ranked best (lowest smoothed final loss; with ``by_best``,
    ``trainer.objective=best``: the best monitored value, ``by_best`` being the monitor's mode,
    min or max) first, then the jobs that diverged or failed, with the reason."""
    rows = []
    jobs = sweep_jobs(sweep_dir)
    labels = job_labels(jobs)
    for job in jobs:
        path = job / "summary.json"
        if path.exists():
            s = json.loads(path.read_text(encoding="utf-8"))
        else:  # still running, or stopped before it could say why
            s = {"status": "unfinished", "reason": "the job wrote no summary.json"}
        rows.append(
            {
                "job": job.name,
                "overrides": labels[job],
                "status": s.get("status", FINISHED),
                "reason": s.get("reason"),
                "smoothed_loss": s.get("smoothed_loss"),
                "final_loss": s.get("final_loss"),
                "eval": s.get("eval") or {},
                "steps_per_s": s.get("steps_per_s"),
                "steps": s.get("steps"),
                "best": (s.get("best") or {}).get("value"),
                "run_dir": str(job),
            }
        )

    def key(row: dict[str, Any]) -> tuple[bool, float]:
        v = row["smoothed_loss"] if by_best is None else row["best"]
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            return row["status"] != FINISHED, math.inf
        return row["status"] != FINISHED, -v if by_best == "max" else v

    rows.sort(key=key)
    rank = 0
    for row in rows:
        if row["status"] == FINISHED:
            rank += 1
        row["rank"] = rank if row["status"] == FINISHED else None
    return rows


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    eval_keys = sorted({k for r in rows for k in r["eval"]})
    write_json(sweep_dir / "sweep_summary.json", rows)
    columns = [
        "rank",
        "job",
        "status",
        "overrides",
        "smoothed_loss",
        "final_loss",
        "best",
        *[f"eval.{k}" for k in eval_keys],
        "steps_per_s",
        "steps",
        "reason",
        "run_dir",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = {k: v for k, v in r.items() if k != "eval"}
        flat.update({f"eval.{k}": r["eval"].get(k) for k in eval_keys})
        writer.writerow(flat)
    write_text(sweep_dir / "sweep_summary.csv", buffer.getvalue())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def print_table(rows: list[dict[str, Any]], sweep_dir: Path, console: Console) -> None:
    """The ranking on screen (sweep_summary.csv has every column): a table on a terminal, and
    piped, one line per job with its overrides first and whole."""
    eval_keys = sorted({k for r in rows for k in r["eval"] if isinstance(r["eval"][k], float)})
    finished = sum(r["status"] == FINISHED for r in rows)
    title = f"Sweep {sweep_dir} ({len(rows)} jobs, {finished} finished, best first)"
    by_best = any(r.get("best") is not None for r in rows)
    columns = ["smoothed loss", *(["best"] if by_best else []), *eval_keys, "steps/s"]

    def numbers(r: dict[str, Any]) -> list[str]:
        if r["status"] != FINISHED:
            return [r["status"], *["-"] * (len(columns) - 1)]
        return [
            _fmt(r["smoothed_loss"]),
            *([_fmt(r.get("best"))] if by_best else []),
            *[_fmt(r["eval"].get(k)) for k in eval_keys],
            _fmt(r["steps_per_s"]),
        ]

    if not console.is_terminal:
        console.print(title, highlight=False)
        for r in rows:
            if r["status"] == FINISHED:
                values = "  ".join(f"{c} {v}" for c, v in zip(columns, numbers(r), strict=True))
                line = f"#{r['rank']} job {r['job']}: {r['overrides']}  {values}"
            else:
                line = f"-- job {r['job']}: {r['overrides']}  {r['status']}"
            console.print(line, highlight=False)
    else:
        # Hydra builds this module's callback for every run, sweeps or not: import it here.
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("job: overrides", overflow="fold", min_width=24, ratio=1)
        for col in columns:
            table.add_column(col, justify="right", no_wrap=True)
        for r in rows:
            style = None if r["status"] == FINISHED else "red"
            table.add_row(
                _fmt(r["rank"]), f"{r['job']}: {r['overrides']}", *numbers(r), style=style
            )
        console.print(table)
    for r in rows:
        if r["status"] != FINISHED:
            console.print(f"job {r['job']} {r['status']}: {r['reason']}", highlight=False)


def job_configs(config: DictConfig, config_name: str | None) -> list[tuple[list[str], Any]]:
    """Every job's overrides and composed config, as the sweep will run them. For a sweeper
    that chooses its jobs as it goes (Optuna), the one config its fixed overrides give."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ._compat_hydra import basic_sweep_jobs

    overrides = [str(o) for o in config.hydra.overrides.task]
    sweeper = str(config.hydra.sweeper.get("_target_", ""))
    if sweeper.endswith("BasicSweeper"):
        params = config.hydra.sweeper.get("params") or {}
        overrides = [f"{k}={v}" for k, v in params.items()] + overrides
    parsed = OverridesParser.create().parse_overrides(overrides)
    if sweeper.endswith("BasicSweeper"):
        jobs = basic_sweep_jobs(parsed)
    else:
        jobs = [[o.input_line for o in parsed if not o.is_sweep_override() and o.input_line]]
    return [(job, compose(config_name=config_name, overrides=job)) for job in jobs]


def check_jobs(config: DictConfig, config_name: str | None) -> None:
    """Refuse a sweep (exit 2, before the first job) when one of its jobs has a setting that
    is wrong before anything runs: the same checks a job makes before it trains."""
    from .config import parse_config

    for overrides, cfg in job_configs(config, config_name):
        try:
            parse_config(cfg)
        except PyrotrainError as exc:
            which = " ".join(overrides) or "(no overrides)"
            exit_with(f"{exc} (in the sweep's job with {which}; no job was run)")


def _by_best(config: DictConfig) -> str | None:
    """The monitor's mode when the jobs are ranked by it (``trainer.objective=best``), else None."""
    if OmegaConf.select(config, "trainer.objective") != "best":
        return None
    return str(OmegaConf.select(config, "trainer.early_stopping.mode", default="min"))


class SweepSummary(Callback):
    """Hydra callback: check the jobs first; after each job and at the end, rank the jobs and
    write sweep_summary.csv/.json; at the end also comparison.png, and exit 1 when every job
    diverged or failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_main_process():
            check_jobs(config, kwargs.get("config_name"))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        # A sweep stopped half-way (Ctrl-C, a killed process) still has a summary of its jobs.
        # hydra.mode is an enum here: compared with the string, it never matched.
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN or not is_main_process():
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            write_summary(sweep_dir, collect(sweep_dir, _by_best(config)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_main_process():  # under a launcher every rank runs the sweep
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir, _by_best(config)) if sweep_dir.is_dir() else []
        if not rows:
            return
        write_summary(sweep_dir, rows)
        for job in sweep_jobs(sweep_dir):
            if not (job / "loss.png").exists():
                plot_run(job)
        plot_sweep(sweep_dir)
        console = screen()
        print_table(rows, sweep_dir, console)
        console.print(
            f"sweep summary: {sweep_dir / 'sweep_summary.csv'}  "
            f"plot: {sweep_dir / 'comparison.png'}",
            highlight=False,
        )
        study = sweep_dir / "optimization_results.yaml"
        if study.exists():  # an Optuna search: where its study lives
            import yaml

            found = yaml.safe_load(study.read_text(encoding="utf-8")) or {}
            console.print(
                f"optuna study: {found.get('study_name')} in {found.get('storage')}",
                highlight=False,
            )
        # A pruned trial is the search working: only a sweep of jobs that all diverged or failed
        # is a failure.
        if not any(r["status"] in (FINISHED, "pruned") for r in rows):
            screen(stderr=True).print(
                f"[bold red]stopped:[/] no job of the sweep finished ({len(rows)} diverged or "
                "failed; the reasons are above and in sweep_summary.csv)",
                highlight=False,
            )
            sys.exit(1)
