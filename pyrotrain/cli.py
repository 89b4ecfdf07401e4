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
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.markup import escape

from .config import moved_keys
from .distributed import (
    failure_message,
    is_main_process,
    launch_env,
    process_rank,
    start_process,
)
from .errors import PyrotrainError
from .loop import train
from .outputs import undo as undo_outputs

EXIT_USAGE = 2
_show_traceback = False  # HYDRA_FULL_ERROR=1 as the user set it


@hydra.main(version_base="1.3", config_path="pkg://pyrotrain.conf", config_name="config")
def _job(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    _limit_threads_for_parallel_jobs(hydra_cfg.launcher)
    try:
        summary = train(cfg, run_dir)
    except PyrotrainError as exc:
        if exc.exit_code == EXIT_USAGE and is_main_process():
            undo_outputs(run_dir)  # bad input writes nothing
        if _show_traceback:
            raise
        if exc.exit_code != EXIT_USAGE and not is_main_process():
            sys.exit(exc.exit_code)  # rank 0 says why the job stopped
        # Exit here: an exception would make Hydra print its own report before ours.
        _report(str(exc), exc.exit_code)
    if not is_main_process():  # rank 0 speaks for the job
        return objective(summary, cfg.trainer.get("objective", "smoothed_loss"))
    console = Console()
    console.print(
        f"final loss {summary['final_loss']:.6g} (smoothed {summary['smoothed_loss']:.6g}) "
        f"after {summary['steps']} steps, {summary['steps_per_s']:.1f} steps/s"
    )
    if summary.get("eval"):
        console.print(
            "eval "
            + "  ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in summary["eval"].items()
            )
        )
    if summary.get("stopped_early_at") is not None:
        best = summary["best"]
        console.print(
            f"stopped early at step {summary['stopped_early_at']}: {best['monitor']} last "
            f"improved at step {best['step']} ({best['value']:.6g}); its parameters are in "
            "checkpoints/best.pt"
        )
    from .plots import plot_run

    plot_run(run_dir)
    console.print(f"run dir: {run_dir}")
    return objective(summary, cfg.trainer.get("objective", "smoothed_loss"))


def objective(summary: dict, path: str) -> float:
    """The summary value at a dotted ``path`` (``eval.rmse``), returned to Hydra's sweeper;
    ``best`` is the best value of the early-stopping monitor."""
    if path == "best" and summary.get("best"):
        return float(summary["best"]["value"])
    value: Any = summary
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            choices = ["smoothed_loss", "final_loss"] + [
                f"eval.{k}" for k in (summary.get("eval") or {})
            ]
            _report(
                PyrotrainError(
                    "no such value in the run's summary",
                    key="trainer.objective",
                    value=path,
                    choices=choices,
                ).message()
            )
        value = value[part]
    return float(value)


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


def _report(message: str, exit_code: int = EXIT_USAGE) -> None:
    rank = process_rank()
    tag = escape(f"[rank {rank}] ") if rank else ""
    Console(stderr=True).print(
        f"[bold red]{'error' if exit_code == EXIT_USAGE else 'stopped'}:[/] {tag}{escape(message)}",
        highlight=False,
        soft_wrap=True,
    )
    sys.exit(exit_code)


def main() -> None:
    # Users' own models and data (model.target=mymodule:Model) import from the working directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    global _show_traceback
    user_wants_trace = _show_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # Hydra then re-raises instead of printing its own multi-paragraph report and exiting 1.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    launch = launch_env()
    try:
        start_process(sys.argv)
        _job()
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without a checkpoint
        if user_wants_trace:
            raise
        Console(stderr=True).print("[bold red]interrupted[/]", highlight=False)
        sys.exit(130)
    except Exception as exc:
        message = user_error_message(exc)
        if user_wants_trace:
            raise
        if message is None and launch is not None and launch.size > 1:
            # One rank down ends the job: this rank exits (the launcher then stops the others,
            # and their pending collectives fail) with a message that names it.
            message = failure_message(exc, launch)
            Console(stderr=True).print(
                f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
            )
            sys.exit(1)
        if message is None:
            raise
        _report(message)
    finally:
        if not user_wants_trace:
            os.environ.pop("HYDRA_FULL_ERROR", None)


if __name__ == "__main__":
    main()
