"""The ``pyrotrain`` command: Hydra composes the config, :func:`pyrotrain.train` runs it.

User mistakes (bad overrides, unknown config options, invalid values) end with one paragraph on
stderr and exit code 2; ``HYDRA_FULL_ERROR=1`` shows the full traceback instead.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from pathlib import Path

import hydra
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.markup import escape

from .config import moved_keys
from .console import exit_with, screen, show_warnings_plainly
from .distributed import (
    failure_message,
    is_main_process,
    launch_env,
    start_process,
)
from .errors import PyrotrainError
from .evaluation import objective_value
from .loop import train
from .outputs import undo as undo_outputs
from .search import PRUNED, TrialPruned, trial_reporter
from .sweep import record_failure
from .targets import describe_exception
from .tracking import log_plots

EXIT_USAGE = 2
_show_traceback = False  # HYDRA_FULL_ERROR=1 as the user set it


@hydra.main(version_base="1.3", config_path="pkg://pyrotrain.conf", config_name="config")
def _job(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    _limit_threads_for_parallel_jobs(hydra_cfg.launcher)
    # In a sweep, a job that diverges or fails is recorded and the sweep goes on (one process;
    # under a launcher, one rank down still ends the job everywhere).
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    launch = launch_env()
    survives = in_sweep and not _show_traceback and (launch is None or launch.size == 1)
    label = f"[job {hydra_cfg.job.num}]" if in_sweep else ""
    objective = OmegaConf.select(cfg, "trainer.objective", default="smoothed_loss")
    try:
        reporter = None
        if survives:  # a trial of an Optuna search reports to its study as it trains
            reporter = trial_reporter(hydra_cfg.sweeper, hydra_cfg.sweep.dir, objective)
        summary = train(cfg, run_dir, label=label, on_log=reporter)
    except TrialPruned as exc:
        return _job_failed(run_dir, label, PRUNED, str(exc))
    except PyrotrainError as exc:
        if exc.exit_code == EXIT_USAGE and is_main_process():
            undo_outputs(run_dir)  # bad input writes nothing
        if _show_traceback:
            raise
        if survives and exc.exit_code == 1:  # a non-finite loss or gradient
            return _job_failed(run_dir, label, "diverged", str(exc))
        if exc.exit_code != EXIT_USAGE and not is_main_process():
            sys.exit(exc.exit_code)  # rank 0 says why the job stopped
        # Exit here: an exception would make Hydra print its own report before ours.
        exit_with(str(exc), exc.exit_code)
    except Exception as exc:
        if not survives or user_error_message(exc) is not None:
            raise
        return _job_failed(run_dir, label, "failed", describe_exception(exc), exc)
    try:
        value = objective_value(summary, objective)
    except PyrotrainError as exc:
        exit_with(str(exc))
    if not is_main_process():  # rank 0 speaks for the job
        return value
    console = screen()
    tag = escape(f"{label} ") if label else ""
    console.print(
        f"{tag}final loss {summary['final_loss']:.6g} (smoothed {summary['smoothed_loss']:.6g}) "
        f"after {summary['steps']} steps, {summary['steps_per_s']:.1f} steps/s"
    )
    if summary.get("eval"):
        console.print(
            f"{tag}eval "
            + "  ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in summary["eval"].items()
            )
        )
    if summary.get("stopped_early_at") is not None:
        best = summary["best"]
        console.print(
            f"{tag}stopped early at step {summary['stopped_early_at']}: {best['monitor']} last "
            f"improved at step {best['step']} ({best['value']:.6g}); its parameters are in "
            "checkpoints/best.pt"
        )
    from .plots import plot_run

    plot_run(run_dir)
    log_plots(run_dir)  # with logger=mlflow, the plots join the run's artifacts
    console.print(f"{tag}run dir: {escape(str(run_dir))}")
    return value


def _job_failed(
    run_dir: Path, label: str, status: str, reason: str, exc: BaseException | None = None
) -> float:
    """Record a sweep job that diverged, failed or was pruned (its summary.json says so, with
    the reason; error.txt holds the traceback of a failure) and return NaN to the sweeper."""
    detail = None
    if exc is not None:
        detail = "".join(traceback.format_exception(exc))
    path = record_failure(run_dir, status, _one_paragraph(reason), detail)
    where = f" (traceback: {run_dir / 'error.txt'})" if detail else ""
    style = "yellow" if status == PRUNED else "bold red"
    screen(stderr=True).print(
        f"[{style}]{escape(label)} {status}:[/] {escape(_one_paragraph(reason))}{escape(where)} "
        f"The sweep goes on; this job is marked {status} in {escape(str(path))}.",
        highlight=False,
    )
    return float("nan")


def _limit_threads_for_parallel_jobs(launcher: DictConfig) -> None:
    """Under the joblib launcher, give each of the parallel jobs its share of the cores."""
    if "joblib" not in str(launcher.get("_target_", "")):
        return
    cores = os.cpu_count() or 1
    n_jobs = int(launcher.get("n_jobs", -1) or -1)
    if n_jobs < 0:  # joblib's convention: -1 is every core, -2 all but one, ...
        n_jobs = max(1, cores + 1 + n_jobs)
    torch.set_num_threads(max(1, cores // n_jobs))


def _from_hydras_setup(exc: BaseException) -> bool:
    """Whether Hydra raised ``exc`` while setting up the job's directory, before pyrotrain ran."""
    frames = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
    in_hydra = any(f"{os.sep}hydra{os.sep}" in f for f in frames)
    in_job = any(f"{os.sep}pyrotrain{os.sep}" in f and not f.endswith("cli.py") for f in frames)
    return in_hydra and not in_job


def _one_paragraph(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def user_error_message(exc: BaseException) -> str | None:
    """The one-paragraph message for a mistake the user made, or None for anything else."""
    if isinstance(exc, PyrotrainError):
        return str(exc)
    if isinstance(exc, yaml.YAMLError):  # a config file (--config-path, --config-dir) is broken
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = ": ".join(
            str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p
        )
        return PyrotrainError(
            f"the config file {where} is not valid YAML: {problem or exc}",
            hint="Fix the file; 'pyrotrain --cfg job' prints the composed config once it loads",
        ).message()
    if isinstance(exc, OSError) and exc.filename is not None and _from_hydras_setup(exc):
        sweep = any(a in ("-m", "--multirun") for a in sys.argv[1:])
        key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
        return PyrotrainError(
            f"the job's directory {exc.filename} cannot be created: {exc.strerror}",
            key=key,
            value=str(exc.filename),
            hint=f"Choose a directory you can write, e.g. {key}=outputs/myrun",
        ).message()
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        if group and exc.options is not None:
            return PyrotrainError(
                f"config group '{group}' has no option '{option}'",
                key=group,
                value=option,
                choices=exc.options,
            ).message()
        return _one_paragraph(str(exc).split("Config search path")[0])
    if isinstance(exc, OverrideParseException):
        return _one_paragraph(f"Cannot parse the override '{exc.override}': {exc.message}")
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        moved = moved_keys().get(str(getattr(cause, "full_key", "")))
        if moved is not None:
            key = str(getattr(cause, "full_key", ""))
            return PyrotrainError(
                f"'{key}' is no longer a setting: it is now {moved}",
                key=key,
                hint=f"Set {moved}=... instead",
            ).message()
        detail = f" ({_one_paragraph(str(cause))})" if cause is not None else ""
        hint = ""
        if "not in struct" in detail:
            hint = " To add a new key, prefix it with '+' (e.g. +trainer.new_key=1)."
        return _one_paragraph(f"{exc}{detail}.{hint}")
    if isinstance(exc, OmegaConfBaseException):
        return _one_paragraph(str(exc))
    return None


def _register_sweeper() -> None:
    """Hydra finds plugins by scanning the ``hydra_plugins`` namespace, which setuptools' editable
    installs (``pip install -e .``) hide from it: register pyrotrain's sweeper by name instead."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.pyrotrain_optuna.sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)


def main() -> None:
    # Users' own models and data (model.target=mymodule:Model) import from the working directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    show_warnings_plainly()
    global _show_traceback
    user_wants_trace = _show_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # Hydra then re-raises instead of printing its own multi-paragraph report and exiting 1.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    launch = launch_env()
    try:
        start_process(sys.argv)
        _register_sweeper()
        _job()
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without a checkpoint
        if user_wants_trace:
            raise
        screen(stderr=True).print("[bold red]interrupted[/]", highlight=False)
        sys.exit(130)
    except Exception as exc:
        message = user_error_message(exc)
        if user_wants_trace:
            raise
        if message is None and launch is not None and launch.size > 1:
            # One rank down ends the job: this rank exits (the launcher then stops the others,
            # and their pending collectives fail) with a message that names it.
            message = failure_message(exc, launch)
            screen(stderr=True).print(
                f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
            )
            sys.exit(1)
        if message is None:
            raise
        exit_with(message)
    finally:
        if not user_wants_trace:
            os.environ.pop("HYDRA_FULL_ERROR", None)


if __name__ == "__main__":
    main()
