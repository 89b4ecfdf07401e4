"""MLflow tracking (``logger=mlflow``): each run an MLflow run, a ``--multirun`` sweep a parent run
with a child per job.

A run records the flattened config as params; tags naming the model, the optimizer stack and the
git commit; every metrics row as metrics at its step; at the end the summary's numbers, and
summary.json, the composed config and the plots as artifacts. The tracking store is checked when
the run starts, before the first step: one that cannot be reached or written is a user error
(exit 2). Later, a failure to log is one warning, and training goes on without MLflow
(metrics.jsonl has every row). Only the process that writes the run directory (rank 0) logs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .errors import PyrotrainError
from .io import write_json

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from .config import MlflowConfig, RunConfig

RUN_FILE = "mlflow_run.json"  # in the run directory: the tracking URI and the run's id
PARENT_ENV = "PYROTRAIN_MLFLOW_PARENT_RUN_ID"  # set for a sweep's jobs by SweepRun
_BATCH = 100  # params per log_batch call (MLflow's limit)


def _client(settings: MlflowConfig) -> tuple[MlflowClient, str]:
    """The client and the experiment's id, the store checked by using it: a store that cannot
    be reached or written raises :class:`PyrotrainError`."""
    # An unreachable server: a few quick retries, not MLflow's minutes of backoff (the user's
    # environment still wins).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise PyrotrainError(
            "logger=mlflow needs MLflow, which is not installed",
            key="logger",
            value="mlflow",
            hint='Install it with pip install -e ".[mlflow]" (or pip install mlflow-skinny)',
        ) from None
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # MLflow says why, once
    try:
        client = MlflowClient(tracking_uri=settings.tracking_uri)
        experiment = client.get_experiment_by_name(settings.experiment_name)
        if experiment is not None:
            return client, experiment.experiment_id
        return client, client.create_experiment(settings.experiment_name)
    except Exception as exc:
        raise PyrotrainError(
            f"the MLflow tracking store cannot be used ({type(exc).__name__}: {_first_line(exc)})",
            key="logger.mlflow.tracking_uri",
            value=settings.tracking_uri,
            hint="Give a store you can write: a SQLite file (sqlite:///mlflow.db), a "
            "directory, or a running MLflow server's http:// URL",
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def flatten(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``{"optim": {"lr": 0.1}}`` as ``("optim.lr", "0.1")``; lists as their JSON."""
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flatten(value, name + ".")
        else:
            yield name, json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit checked out where the run was started, if that is a git repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _tags(config: RunConfig, run_dir: Path) -> dict[str, str]:
    stack = " ".join(f"{g.name}:{'frozen' if g.frozen else g.optimizer}" for g in config.groups)
    tags = {
        "model": config.model.name,
        "optimizer_stack": stack,
        "run_dir": str(run_dir.resolve()),
        "mlflow.source.name": "pyrotrain",
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    parent = os.environ.get(PARENT_ENV)
    if parent:
        tags["mlflow.parentRunId"] = parent
    return tags


class MlflowRun:
    """One training run's MLflow run: started (and the store checked) before the first step,
    fed every metrics row, finished with the summary and the artifacts."""

    def __init__(self, settings: MlflowConfig, config: RunConfig, run_dir: Path):
        from mlflow.entities import Param

        self.settings = settings
        self.run_dir = run_dir
        self.client, experiment_id = _client(settings)
        self._warned = False
        self.active = True
        name = settings.run_name or _run_name(run_dir)
        try:
            run = self.client.create_run(experiment_id, run_name=name, tags=_tags(config, run_dir))
            self.run_id = run.info.run_id
            params = [Param(k, v[:6000]) for k, v in flatten(config.plain)]
            for i in range(0, len(params), _BATCH):
                self.client.log_batch(self.run_id, params=params[i : i + _BATCH])
        except Exception as exc:
            raise PyrotrainError(
                f"the MLflow run cannot be created ({type(exc).__name__}: {_first_line(exc)})",
                key="logger.mlflow.tracking_uri",
                value=settings.tracking_uri,
            ) from None
        write_json(
            run_dir / RUN_FILE,
            {"tracking_uri": settings.tracking_uri, "run_id": self.run_id},
        )

    def _guard(self, what: str, call: Any, *args: Any, **kwargs: Any) -> None:
        """Log through MLflow; a failure is one warning, and the run goes on without MLflow."""
        if not self.active:
            return
        try:
            call(*args, **kwargs)
        except Exception as exc:
            self.active = False
            warnings.warn(
                f"MLflow: {what} failed ({type(exc).__name__}: {_first_line(exc)}); training "
                f"goes on without MLflow, and metrics.jsonl in {self.run_dir} has every row",
                RuntimeWarning,
                stacklevel=2,
            )

    def write(self, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(row["step"])
        metrics = [
            Metric(k, float(v), now, step)
            for k, v in row.items()
            if k not in ("step",) and _number(v)
        ]
        self._guard("logging metrics", self.client.log_batch, self.run_id, metrics=metrics)

    def finish(self, summary: Mapping[str, Any]) -> None:
        """The summary's numbers (as ``summary/...`` metrics at the last step), summary.json and
        the composed config as artifacts, and the run marked finished."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(summary.get("steps") or 0)
        numbers = [Metric(f"summary/{k}", float(v), now, step) for k, v in flatten_numbers(summary)]
        self._guard("logging the summary", self.client.log_batch, self.run_id, metrics=numbers)
        for path in (self.run_dir / "summary.json", self.run_dir / ".hydra" / "config.yaml"):
            if path.exists():
                self._guard("logging an artifact", self.client.log_artifact, self.run_id, path)
        self._guard("ending the run", self.client.set_terminated, self.run_id, "FINISHED")

    def fail(self, exc: BaseException) -> None:
        """The run stopped early (diverged, pruned, interrupted): marked as failed, and why."""
        reason = _first_line(exc)[:5000] or type(exc).__name__
        self._guard("tagging the run", self.client.set_tag, self.run_id, "stopped", reason)
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        self._guard("ending the run", self.client.set_terminated, self.run_id, status)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flatten_numbers(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in node.items():
        if isinstance(value, Mapping):
            yield from flatten_numbers(value, f"{prefix}{key}/")
        elif _number(value):
            yield f"{prefix}{key}", float(value)


def _run_name(run_dir: Path) -> str:
    try:
        return str(run_dir.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(run_dir)


def log_plots(run_dir: Path) -> None:
    """Add the run directory's plots to its MLflow run (the CLI draws them after training)."""
    record = run_dir / RUN_FILE
    plots = sorted(run_dir.glob("*.png"))
    if not record.exists() or not plots:
        return
    try:
        from mlflow.tracking import MlflowClient

        info = json.loads(record.read_text(encoding="utf-8"))
        client = MlflowClient(tracking_uri=info["tracking_uri"])
        for path in plots:
            client.log_artifact(info["run_id"], str(path), artifact_path="plots")
    except Exception as exc:
        warnings.warn(
            f"MLflow: logging the plots failed ({type(exc).__name__}: {_first_line(exc)}); "
            f"they are in {run_dir}",
            RuntimeWarning,
            stacklevel=2,
        )


def _mlflow_settings(config: DictConfig) -> MlflowConfig | None:
    from .config import parse_loggers
    from .schema import to_plain

    node = OmegaConf.select(config, "logger")
    return parse_loggers(to_plain(node, "logger")).mlflow


class SweepRun(Callback):
    """Hydra callback: with ``logger=mlflow``, a ``--multirun`` sweep is one MLflow run (named
    after the sweep directory) whose children are the jobs' runs."""

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from .distributed import is_main_process

        if not is_main_process():
            return
        settings = _mlflow_settings(config)
        if settings is None:
            return
        from .console import exit_with

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            self.client, experiment_id = _client(settings)
        except PyrotrainError as exc:
            exit_with(str(exc))
        run = self.client.create_run(
            experiment_id,
            run_name=_run_name(sweep_dir),
            tags={"sweep_dir": str(sweep_dir.resolve()), "mlflow.source.name": "pyrotrain"},
        )
        self.run_id = run.info.run_id
        os.environ[PARENT_ENV] = self.run_id  # the jobs (and joblib's workers) read it

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.client is None or self.run_id is None:
            return
        os.environ.pop(PARENT_ENV, None)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            for name in ("sweep_summary.csv", "optimization_results.yaml"):
                if (sweep_dir / name).exists():
                    self.client.log_artifact(self.run_id, str(sweep_dir / name))
            rows = []
            if (sweep_dir / "sweep_summary.json").exists():
                rows = json.loads((sweep_dir / "sweep_summary.json").read_text(encoding="utf-8"))
            finished = any(r.get("status") == "finished" for r in rows)
            self.client.set_terminated(self.run_id, "FINISHED" if finished else "FAILED")
            print(f"mlflow: sweep run {self.run_id} in {self.client.tracking_uri}", flush=True)
        except Exception as exc:
            warnings.warn(
                f"MLflow: ending the sweep's run failed ({type(exc).__name__}: {_first_line(exc)})",
                RuntimeWarning,
                stacklevel=2,
            )
